"""The clinician review bundle: every export of one case in one folder, written atomically.

::

    <out_dir>/
      labels.nii.gz, labels.json, uncertainty.nii.gz   input geometry; names, colours, codes
      seg.dcm, rtstruct.dcm, dicom/                     DICOM input (or ``dicom_series=True``)
      labels.seg.nrrd                                   3D Slicer
      overlays/{axial,coronal,sagittal,uncertainty}.png
      stats.json, stats.csv, report.html, manifest.json
      qa.json                                           bundle-level QA: case_flags (always), shape plausibility

Everything is written into a temporary sibling folder, which replaces ``out_dir`` by a rename
only when every file is complete; on any failure the temporary folder is removed and an
existing ``out_dir`` is left untouched.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, cast

import numpy as np
import pydicom

from deconvseg.pipeline.autoencoding.assessment import ShapeAssessment
from deconvseg.pipeline.domain import CaseFlag, TrainingDomain, output_flags
from deconvseg.pipeline.errors import InputError
from deconvseg.pipeline.export.dicom_seg import write_dicom_seg
from deconvseg.pipeline.export.dicom_series import SeriesReference, prepare_reference
from deconvseg.pipeline.export.grid import align_to_image
from deconvseg.pipeline.export.manifest import build_manifest, write_manifest
from deconvseg.pipeline.export.nifti import write_labels_json, write_labels_nifti, write_uncertainty_nifti
from deconvseg.pipeline.export.overlays import write_overlays
from deconvseg.pipeline.export.report import ReportHeader, subject_rows, write_report
from deconvseg.pipeline.export.rtstruct import write_rtstruct
from deconvseg.pipeline.export.seg_nrrd import write_seg_nrrd
from deconvseg.pipeline.export.shape_qa import FLAG as SHAPE_FLAG
from deconvseg.pipeline.export.shape_qa import flag_structures, shape_entry, write_qa
from deconvseg.pipeline.export.stats import StatsConfig, compute_stats, write_stats
from deconvseg.pipeline.files import atomic_folder
from deconvseg.pipeline.io.checks import check_label_values, label_dtype
from deconvseg.pipeline.labels import LabelTable
from deconvseg.pipeline.outputs import check_bundle_target
from deconvseg.pipeline.pacs.naming import result_description
from deconvseg.pipeline.sanitize import METHOD as DEIDENTIFICATION_METHOD
from deconvseg.pipeline.sanitize import deidentify_dataset
from deconvseg.pipeline.viewer import check_viewer_base, viewer_url
from deconvseg.pipeline.volume import Volume

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BundleSummary:
    """What ``write_bundle`` wrote.

    Attributes:
        path: the bundle folder.
        stats: per-structure dicts, as in ``stats.json``.
        flags: ``{"name", "value", "flag"}`` for every QA flag raised (a bundle-level one has
            ``name`` ``"shape"`` and the score as ``value``).
        timings: stage -> seconds.
        manifest: the manifest as written.
        qa: bundle-level QA entries, as in ``qa.json`` (``{}`` when none was scored).
    """

    path: Path
    stats: list[dict[str, Any]]
    flags: list[dict[str, Any]]
    timings: dict[str, float] = field(default_factory=dict)
    manifest: dict[str, Any] = field(default_factory=dict)
    qa: dict[str, Any] = field(default_factory=dict)


@contextmanager
def _stage(timings: dict[str, float], name: str) -> Iterator[None]:
    start = time.perf_counter()
    yield
    timings[name] = time.perf_counter() - start


def _write_volume_files(
    folder: Path, labels: Volume, table: LabelTable, uncertainty: Volume | None, timings: dict[str, float]
) -> None:
    """``labels.nii.gz``, ``labels.json``, ``uncertainty.nii.gz`` and ``labels.seg.nrrd``."""
    with _stage(timings, "nifti"):
        write_labels_nifti(folder / "labels.nii.gz", labels)
        write_labels_json(folder / "labels.json", table)
        if uncertainty is not None:
            write_uncertainty_nifti(folder / "uncertainty.nii.gz", uncertainty)
    with _stage(timings, "seg_nrrd"):
        write_seg_nrrd(folder / "labels.seg.nrrd", labels, table)


def _label_map(labels: Volume) -> Volume:
    """``labels`` with an integer array (0..uint32, ``deconvseg.pipeline.io.checks.check_label_values``); float
    maps must hold whole numbers and become the smallest unsigned type that holds them."""
    source = labels.metadata.get("source", "label map")
    array = labels.array
    if not np.issubdtype(array.dtype, np.integer) and not np.array_equal(array, np.round(array)):
        raise InputError(source, "holds non-integer values", "pass a label map (integers), not probabilities")
    _, high = check_label_values(array, source)
    if np.issubdtype(array.dtype, np.integer):
        return labels
    return labels.with_array(array.astype(label_dtype(high)), kind="label")


def _input_files(image: Volume, labels: Volume) -> dict[str, list[str | Path]]:
    source = Path(str(image.metadata.get("source", "")))
    files = {"image": list(image.metadata.get("dicom_files") or ([str(source)] if source.is_file() else []))}
    if Path(str(labels.metadata.get("source", ""))).is_file():
        files["labels"] = [labels.metadata["source"]]
    return files


def _deidentified(reference: SeriesReference, pseudonym: str) -> SeriesReference:
    """``reference`` with de-identified datasets; the copies it wrote into the bundle are rewritten."""
    datasets = [deidentify_dataset(ds, pseudonym) for ds in reference.datasets]
    for path, ds in zip(reference.files, datasets):
        ds.save_as(path, enforce_file_format=True)
    return replace(reference, datasets=datasets)


def _mark_deidentified(paths: list[Path]) -> None:
    """Set PatientIdentityRemoved/DeidentificationMethod on written SEG/RTSTRUCT files (PS3.15 E.1)."""
    for path in paths:
        ds = pydicom.dcmread(path)
        ds.PatientIdentityRemoved, ds.DeidentificationMethod = "YES", DEIDENTIFICATION_METHOD
        ds.save_as(path, enforce_file_format=True)


def _described(manifest: dict[str, Any] | None) -> dict[str, str]:
    """``series_description`` naming the model and its version (``deconvseg <name> <12 hex>``), when known."""
    model = (manifest or {}).get("model")
    if not isinstance(model, dict) or not model.get("version"):
        return {}
    name = model.get("name") or Path(str(model.get("dir", "model"))).name
    return {"series_description": result_description(str(name), str(model["version"]))}


def write_bundle(
    out_dir: str | Path,
    image: Volume,
    labels: Volume,
    table: LabelTable,
    *,
    uncertainty: Volume | None = None,
    manifest: dict[str, Any] | None = None,
    stats_config: StatsConfig = StatsConfig(),
    dicom_series: bool = False,
    title: str | None = None,
    deidentify: bool = False,
    shape: ShapeAssessment | None = None,
    viewer_base: str | None = None,
    domain: TrainingDomain | None = None,
    case_flags: Sequence[CaseFlag] = (),
    header: ReportHeader | None = None,
    threads: int = 1,
) -> BundleSummary:
    """Write the review bundle of one case.

    Args:
        out_dir: the case folder to create (replaced atomically when it exists).
        image: the input image; DICOM input carries ``metadata["dicom_files"]`` (z order).
        labels: label map on the image grid (or a flipped/permuted copy of it).
        table: names, colours and codes; must name every value in ``labels``.
        uncertainty: voxel uncertainty in [0, 1] on the image grid.
        manifest: caller's provenance (``model``, ``config``, ``timings_s``, ...), merged in.
        stats_config: QA thresholds.
        dicom_series: for non-DICOM input, write a DICOM series into ``dicom/`` and SEG/RTSTRUCT
            referencing it.
        title: heading of the report (default: the out_dir name).
        deidentify: write SEG/RTSTRUCT and the ``dicom/`` copy without the patient's identity
            (``deconvseg.pipeline.sanitize.deidentify_dataset``, PatientID = the bundle's name) and a manifest
            whose inputs carry hashes but no paths; the manifest records ``"deidentified": true``.
        shape: the shape guard's plausibility of ``labels`` (``SegmentationResult.shape``): written
            to ``qa.json`` and the report; when flagged, the structures it blames get
            ``implausible_shape`` (``deconvseg.pipeline.export.shape_qa``).
        viewer_base: where OHIF is served beside the PACS that holds the study: the manifest's
            ``viewer_url`` and the report's link then open the study with this SEG shown
            (``deconvseg.pipeline.viewer.viewer_url``). Not for de-identified bundles (never stored).
        domain: the model's training domain: its calibrated checks set the structures' flags
            (``deconvseg.pipeline.domain.output_flags``) and add case flags.
        case_flags: case flags raised before inference (``domain_mismatch``, ``out_of_distribution``).
            Every ``qa.json`` holds ``case_flags``: these plus the domain's, as ``{"flag", "reason"}``.
        header: the report's model lines (the subject and de-identification are filled in here).
        threads: with 2 or more, the volume files are written on a second thread beside the rest.

    Returns:
        The summary, with the per-structure stats and flags.

    Raises:
        InputError: ``out_dir`` may not be written (``deconvseg.pipeline.outputs.check_bundle_target``),
            labels off the image grid, non-integer, negative or above uint32, or values the table lacks.
    """
    out_dir = Path(out_dir)
    check_bundle_target(out_dir)  # a file, a link or a folder of the user's is never replaced
    timings: dict[str, float] = {}
    labels = align_to_image(_label_map(labels), image)
    uncertainty = align_to_image(uncertainty, image) if uncertainty is not None else None
    unknown = sorted(set(np.unique(labels.array).tolist()) - {0} - set(table.values))
    if unknown:
        raise InputError(
            labels.metadata.get("source", "label map"),
            f"values {unknown} are not in the label table",
            "pass a label table that names every value (e.g. --labels labels.json)",
        )
    if viewer_base is not None:
        viewer_base = check_viewer_base(viewer_base)
    extra: dict[str, Any] = {}
    # The volume files are gzip-bound and zlib releases the GIL: on a second thread they are written while
    # the DICOM objects, statistics and overlays are made (on a 512x512x250 CT ~2 s of ~6 s hidden).
    with atomic_folder(out_dir) as tmp, ThreadPoolExecutor(1) as side:
        volume_files = functools.partial(_write_volume_files, tmp, labels, table, uncertainty, timings)
        written = side.submit(volume_files) if threads > 1 else None
        if written is None:
            volume_files()
        wants_dicom = bool(image.metadata.get("dicom_files")) or dicom_series
        if wants_dicom and not labels.array.any():
            extra["dicom_reference"] = {"origin": None, "note": "the label map is empty: no SEG or RTSTRUCT written"}
        elif wants_dicom:
            with _stage(timings, "dicom_reference"):
                # make_series=True: a reference always comes back (the image's series or a new one)
                reference = cast(SeriesReference, prepare_reference(image, tmp / "dicom", make_series=True))
                if deidentify:
                    reference = _deidentified(reference, out_dir.name)
            extra["dicom_reference"] = reference.describe()
            with _stage(timings, "dicom_seg"):
                write_dicom_seg(tmp / "seg.dcm", labels, table, reference, **_described(manifest))
            with _stage(timings, "rtstruct"):
                write_rtstruct(tmp / "rtstruct.dcm", labels, table, reference, **_described(manifest))
            if deidentify:
                _mark_deidentified([tmp / "seg.dcm", tmp / "rtstruct.dcm"])
            elif viewer_base is not None:
                seg = pydicom.dcmread(tmp / "seg.dcm", stop_before_pixels=True)
                extra["viewer_url"] = viewer_url(viewer_base, str(seg.StudyInstanceUID), str(seg.SeriesInstanceUID))
        with _stage(timings, "stats"):
            stats = compute_stats(image, labels, table, uncertainty, stats_config)
            found = [*case_flags, *(output_flags(stats, domain) if domain is not None else [])]
            qa: dict[str, Any] = {"case_flags": [flag.model_dump() for flag in found]}
            if shape is not None:
                qa["shape"] = shape_entry(shape, table)
                flag_structures(stats, shape)
            write_qa(tmp / "qa.json", qa)
            write_stats(tmp, stats)
        with _stage(timings, "overlays"):
            overlays = write_overlays(tmp / "overlays", image, labels, table, uncertainty)
        if written is not None:
            written.result()  # its error, if any, fails the bundle (the folder is not kept)
        notes = [f"DICOM: {extra['dicom_reference']['note']}"] if "dicom_reference" in extra else []
        model = (manifest or {}).get("model")
        if isinstance(model, dict) and model:
            notes.append(f"model: {model.get('name') or model.get('dir', '?')} {model.get('version', '')}".strip())
        with _stage(timings, "report"):
            named = notes[-1].removeprefix("model: ") if model else "not recorded (a label map made elsewhere)"
            about = replace(
                header or ReportHeader(model=named), subject=subject_rows(image.metadata), deidentified=deidentify
            )
            write_report(
                tmp / "report.html",
                stats,
                overlays,
                title=title or out_dir.name,
                notes=notes,
                shape=qa.get("shape"),
                viewer_url=extra.get("viewer_url"),
                header=about,
                case_flags=qa["case_flags"],
            )
        caller = dict(manifest or {})
        all_timings = {**caller.pop("timings_s", {}), **{f"export.{k}": v for k, v in timings.items()}}
        record = build_manifest(_input_files(image, labels), timings=all_timings, extra=extra)
        record.update(caller)
        if deidentify:
            record["inputs"] = {
                role: [{"sha256": f["sha256"]} for f in files] for role, files in record["inputs"].items()
            }
            record["deidentified"] = True
        write_manifest(tmp / "manifest.json", record)
    flags = [{"name": row["name"], "value": row["value"], "flag": flag} for row in stats for flag in row["flags"]]
    empty = not labels.array.any()  # an empty map has no shape to judge: its structures are flagged instead
    if qa.get("shape", {}).get("flagged") and not qa["shape"]["blamed"] and not empty:
        flags.append({"name": "shape", "value": qa["shape"]["score"], "flag": SHAPE_FLAG})
    for flag in flags:
        logger.info("%s: %s flagged %s", out_dir.name, flag["name"], flag["flag"])
    return BundleSummary(out_dir, stats, flags, timings, record, qa)
