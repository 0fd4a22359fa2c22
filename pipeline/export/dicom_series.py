"""The DICOM image series that DICOM-SEG and RTSTRUCT refer to.

Three cases, one result (``SeriesReference``: the datasets in z order plus where they came from):

- the input was a DICOM series with proper UIDs: SEG/RTSTRUCT reference it as it is;
- the input was a DICOM series whose UIDs an anonymiser blanked (the TotalSegmentator example has
  empty SOP Instance, Series and Study UIDs): the bundle carries a copy of the series with
  generated UIDs, and SEG/RTSTRUCT reference the copy;
- the input was not DICOM (NIfTI, NRRD, ...): a new series is written from the volume.

Generated UIDs are deterministic (``2.25.<hash>`` from the file contents or voxels, PS3.5 B.2),
so exporting the same input twice gives the same UIDs.
"""

from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, CTImageStorage, ExplicitVRLittleEndian, MRImageStorage

from deconvseg.pipeline.errors import InputError
from deconvseg.pipeline.files import array_digest, file_digest
from deconvseg.pipeline.volume import Volume

Origin = Literal["source", "copy-with-generated-uids", "generated-from-volume"]
_TYPE2_COPIED = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
)
_UID_KEYS = ("SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID", "FrameOfReferenceUID")
_SOP_CLASS = {"CT": CTImageStorage, "MR": MRImageStorage}
_NOTES = {
    "source": "SEG and RTSTRUCT reference the source series as it is",
    "copy-with-generated-uids": "the source series has blank or duplicate UIDs (anonymised); dicom/ holds a copy "
    "with generated deterministic UIDs and SEG/RTSTRUCT reference that copy",
    "generated-from-volume": "the input was not DICOM; dicom/ holds a series made from the volume and "
    "SEG/RTSTRUCT reference it",
}


@dataclass(frozen=True)
class SeriesReference:
    """The image series a SEG/RTSTRUCT refers to, one dataset per z index of the volume.

    Attributes:
        datasets: the image datasets in array z order (with pixel data when they were copied/made).
        origin: ``source``, ``copy-with-generated-uids`` or ``generated-from-volume``.
        files: the files written into the bundle (empty when the source series is referenced).
    """

    datasets: list[Dataset]
    origin: Origin
    files: tuple[Path, ...] = ()

    @property
    def series_instance_uid(self) -> str:
        return str(self.datasets[0].SeriesInstanceUID)

    def describe(self) -> dict:
        """JSON-able summary for the manifest, with a sentence saying what SEG/RTSTRUCT reference."""
        return {
            "origin": self.origin,
            "note": _NOTES[self.origin],
            "series_instance_uid": self.series_instance_uid,
            "study_instance_uid": str(self.datasets[0].StudyInstanceUID),
            "frame_of_reference_uid": str(self.datasets[0].FrameOfReferenceUID),
            "instances": len(self.datasets),
            "files": [f.name for f in self.files],
        }


def deterministic_uid(*parts: str) -> str:
    """A ``2.25.`` UID derived from ``parts``: same parts, same UID (PS3.5 B.2, a 128-bit integer)."""
    digest = hashlib.sha256("\x00".join(("deconvseg", *parts)).encode()).hexdigest()
    return f"2.25.{int(digest[:32], 16)}"


def prepare_reference(image: Volume, folder: Path, *, make_series: bool = True) -> SeriesReference | None:
    """The series SEG/RTSTRUCT should reference, writing a copy or a new series into ``folder``.

    Args:
        image: the image volume; DICOM input carries ``metadata["dicom_files"]`` in z order.
        folder: where copied or generated image files go (created when needed).
        make_series: for non-DICOM input, write a new series (else return ``None``).

    Returns:
        The reference, or ``None`` for non-DICOM input with ``make_series=False``.
    """
    files = image.metadata.get("dicom_files")
    if files:
        if len(files) != image.shape[0]:
            raise InputError(
                files[0],
                f"{len(files)} DICOM files for {image.shape[0]} slices",
                "read the series with deconvseg.pipeline.io.volumes.read_volume so dicom_files follows z order",
            )
        datasets = _with_type2([pydicom.dcmread(f, stop_before_pixels=True) for f in files])
        if not _needs_new_uids(datasets):
            return SeriesReference(datasets, "source")
        copies = _with_type2(assign_uids([pydicom.dcmread(f) for f in files], [file_digest(f) for f in files]))
        return SeriesReference(copies, "copy-with-generated-uids", tuple(write_series(copies, folder)))
    if not make_series:
        return None
    datasets = series_from_volume(image)
    return SeriesReference(datasets, "generated-from-volume", tuple(write_series(datasets, folder)))


def _with_type2(datasets: list[Dataset]) -> list[Dataset]:
    """``datasets`` (read here, so ours to change) with the type 2 patient/study attributes that
    SEG and RTSTRUCT copy set to empty where an anonymiser deleted them (else highdicom fails)."""
    for ds in datasets:
        for keyword in _TYPE2_COPIED:
            if keyword not in ds:
                setattr(ds, keyword, "")
    return datasets


def _needs_new_uids(datasets: list[Dataset]) -> bool:
    for key in _UID_KEYS:
        if any(not str(ds.get(key, "") or "").strip() for ds in datasets):
            return True
    return len({str(ds.SOPInstanceUID) for ds in datasets}) != len(datasets)


def assign_uids(datasets: list[Dataset], content_hashes: list[str]) -> list[Dataset]:
    """Copies of ``datasets`` with blank or duplicate UIDs replaced by deterministic ones.

    Instance UIDs come from each file's content hash; series, study and frame-of-reference UIDs
    from all hashes together. A blank SOP Class UID is taken from the file meta (or the modality).
    """
    series_key = "".join(content_hashes)
    first = datasets[0]
    shared = {
        "SeriesInstanceUID": str(first.get("SeriesInstanceUID", "") or "") or deterministic_uid("series", series_key),
        "StudyInstanceUID": str(first.get("StudyInstanceUID", "") or "") or deterministic_uid("study", series_key),
        "FrameOfReferenceUID": str(first.get("FrameOfReferenceUID", "") or "") or deterministic_uid("for", series_key),
    }
    if len({str(ds.get("SeriesInstanceUID", "")) for ds in datasets}) > 1:
        shared["SeriesInstanceUID"] = deterministic_uid("series", series_key)
    seen: set[str] = set()
    out = []
    for ds, digest in zip(datasets, content_hashes):
        ds = copy.deepcopy(ds)  # Dataset.copy() shares the elements with the caller
        for key, value in shared.items():
            setattr(ds, key, value)
        sop_uid = str(ds.get("SOPInstanceUID", "") or "")
        if not sop_uid or sop_uid in seen:
            sop_uid = deterministic_uid("instance", digest)
        seen.add(sop_uid)
        ds.SOPInstanceUID = sop_uid
        if not str(ds.get("SOPClassUID", "") or ""):
            meta_class = str(getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", "") or "")
            ds.SOPClassUID = meta_class or _SOP_CLASS.get(str(ds.get("Modality", "")), CTImageStorage)
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        ds.file_meta.MediaStorageSOPInstanceUID = UID(sop_uid)
        out.append(ds)
    return out


def write_series(datasets: list[Dataset], folder: Path) -> list[Path]:
    """Write ``datasets`` as ``IM0001.dcm``... into ``folder`` (created when missing)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, ds in enumerate(datasets, start=1):
        path = folder / f"IM{index:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def _to_int16(array: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Stored int16 values, slope and intercept with ``stored * slope + intercept ~= array``."""
    lo, hi = float(array.min()), float(array.max())
    if np.issubdtype(array.dtype, np.integer) and lo >= -32768 and hi <= 32767:
        return array.astype(np.int16), 1.0, 0.0
    slope = (hi - lo) / 65535.0 if hi > lo else 1.0
    intercept = lo + 32768.0 * slope
    stored = np.clip(np.round((array.astype(np.float64) - intercept) / slope), -32768, 32767)
    return stored.astype(np.int16), slope, intercept


def series_from_volume(volume: Volume, *, series_description: str = "deconvseg image") -> list[Dataset]:
    """A CT (or, for MR volumes, MR) image series with the voxels and geometry of ``volume``.

    Raises:
        InputError: the direction matrix is not orthonormal (DICOM planes cannot shear).
    """
    if not np.allclose(volume.direction.T @ volume.direction, np.eye(3), atol=1e-4):
        raise InputError(
            volume.metadata.get("source", "volume"),
            "direction matrix is not orthonormal",
            "resample the image onto an orthonormal grid before exporting DICOM",
        )
    modality = "MR" if volume.modality == "MR" else "CT"
    stored, slope, intercept = _to_int16(volume.array)
    key = f"{array_digest(volume.array)}{volume.affine_lps().round(6).tobytes().hex()}"
    series_uid, study_uid, for_uid = (deterministic_uid(kind, key) for kind in ("series", "study", "for"))
    row, col = volume.direction[:, 0], volume.direction[:, 1]
    datasets = []
    for k in range(volume.shape[0]):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID = _SOP_CLASS[modality]
        ds.SOPInstanceUID = deterministic_uid("instance", key, str(k))
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.SpecificCharacterSet = "ISO_IR 192"
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "", "", "", ""
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, for_uid
        ds.StudyDate = ds.StudyTime = ds.ReferringPhysicianName = ds.StudyID = ds.AccessionNumber = ""
        ds.Modality, ds.SeriesNumber, ds.SeriesDescription = modality, 1, series_description
        ds.Laterality, ds.PatientPosition = "", ""  # type 2C: unknown for a volume from a file
        ds.PositionReferenceIndicator, ds.Manufacturer = "", "deconvseg"
        ds.InstanceNumber = k + 1
        ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
        ds.PixelSpacing = [f"{volume.spacing[1]:.10g}", f"{volume.spacing[0]:.10g}"]
        ds.SliceThickness = f"{volume.spacing[2]:.10g}"
        ds.ImageOrientationPatient = [f"{v:.10g}" for v in (*row, *col)]
        ds.ImagePositionPatient = [f"{v:.10g}" for v in volume.index_to_world([0, 0, k])[0]]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows, ds.Columns = volume.shape[1], volume.shape[2]
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept = f"{slope:.10g}", f"{intercept:.10g}"
        if modality == "CT":
            ds.RescaleType, ds.KVP, ds.AcquisitionNumber = "HU", "", ""
        else:
            ds.ScanningSequence, ds.SequenceVariant, ds.ScanOptions = "RM", "NONE", ""
            ds.MRAcquisitionType, ds.EchoTime, ds.EchoTrainLength = "3D", "", ""
            ds.RepetitionTime, ds.ImagedNucleus = "", "1H"
        ds.PixelData = np.ascontiguousarray(stored[k]).tobytes()
        datasets.append(ds)
    return datasets
