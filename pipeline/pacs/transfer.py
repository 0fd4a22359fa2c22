"""WADO-RS retrieval of a series into a folder, STOW-RS storage of our results, and the check
that makes a rerun store nothing new."""

from __future__ import annotations

import shutil
from pathlib import Path

import pydicom
from dicomweb_client.api import DICOMwebClient
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from deconvseg.pipeline.pacs.connection import translated
from deconvseg.pipeline.pacs.errors import PacsError
from deconvseg.pipeline.pacs.query import SeriesInfo

# Ask for the instances as stored: transcoding (e.g. JPEG 2000 to raw) is optional for a server.
_AS_STORED = (("application/dicom", "*"),)
_REFERENCE_TAGS = ("00080018", "00081115")  # SOP Instance UID, Referenced Series Sequence


def retrieve_series(client: DICOMwebClient, series: SeriesInfo, folder: Path) -> list[Path]:
    """Download every instance of ``series`` into ``folder`` (replaced), one ``.dcm`` file each.

    The folder is filled under a temporary name and renamed when complete, so a failed transfer
    leaves nothing that looks like a series.

    Raises:
        PacsError: the PACS refused or failed, or the series holds no instance.
    """
    partial = folder.with_name(f".{folder.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        paths = []
        with translated(client.base_url, f"WADO-RS retrieval of series {series.series_uid}"):
            for index, ds in enumerate(
                client.iter_series(series.study_uid, series.series_uid, media_types=_AS_STORED), start=1
            ):
                paths.append(_save(ds, partial / f"IM{index:05d}.dcm"))
        if not paths:
            raise PacsError(
                client.base_url,
                f"series {series.series_uid} holds no instance",
                "check the series in the PACS",
                transient=False,
            )
        shutil.rmtree(folder, ignore_errors=True)
        partial.rename(folder)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return [folder / p.name for p in paths]


def _save(ds: pydicom.Dataset, path: Path) -> Path:
    """Write a retrieved dataset as a DICOM file (part 10, with file meta)."""
    if not hasattr(ds, "file_meta") or "TransferSyntaxUID" not in ds.file_meta:
        meta = FileMetaDataset()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta = meta
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(path, enforce_file_format=True)
    return path


def store_instances(client: DICOMwebClient, paths: list[Path]) -> list[str]:
    """STOW-RS ``paths`` in ONE request (put the completion marker, our SEG, last).

    Returns:
        The SOP Instance UIDs the PACS reported stored.

    Raises:
        PacsError: the request failed, or the PACS reported an instance as failed.
    """
    datasets = [pydicom.dcmread(p) for p in paths]
    with translated(client.base_url, "STOW-RS storage"):
        response = client.store_instances(datasets)
    failed = [str(item.ReferencedSOPInstanceUID) for item in response.get("FailedSOPSequence", [])]
    if failed:
        raise PacsError(client.base_url, f"the PACS refused instances {failed}", "see the PACS log", transient=False)
    return [str(item.ReferencedSOPInstanceUID) for item in response.get("ReferencedSOPSequence", [])]


def stored_results(client: DICOMwebClient, series: SeriesInfo, description: str) -> list[str]:
    """UIDs of SEG instances in ``series``' study that carry our ``description`` (model and
    version) and reference ``series``: non-empty means this series is already done.

    Raises:
        PacsError: the PACS refused or could not be reached.
    """
    with translated(client.base_url, "QIDO-RS query for stored results"):
        candidates = client.search_for_series(
            study_instance_uid=series.study_uid, search_filters={"Modality": "SEG"}, fields=["SeriesDescription"]
        )
    found = []
    for item in candidates:
        series_uid = item.get("0020000E", {}).get("Value", [""])[0]
        if (item.get("0008103E", {}).get("Value") or [""])[0] != description:
            continue
        with translated(client.base_url, "WADO-RS metadata of a stored SEG"):
            metadata = client.retrieve_series_metadata(series.study_uid, series_uid)
        for instance in metadata:  # only the references and the UID (no bulk data to fetch)
            ds = pydicom.Dataset.from_json({tag: instance[tag] for tag in _REFERENCE_TAGS if tag in instance})
            referenced = {str(ref.SeriesInstanceUID) for ref in ds.get("ReferencedSeriesSequence", [])}
            if series.series_uid in referenced:
                found.append(str(ds.SOPInstanceUID))
    return found
