"""Read a DICOM image series from a folder: choose the series, order and check its slices.

Headers are read with pydicom (``stop_before_pixels``), pixels with SimpleITK/GDCM (which
decodes JPEG 2000 and applies RescaleSlope/Intercept). The geometry is built from the headers:

    origin    = ImagePositionPatient of the first slice (after sorting)
    direction = [row cosine, column cosine, row x column]   (ImageOrientationPatient)
    spacing   = (PixelSpacing[1], PixelSpacing[0], step of the slice positions along the normal)

Slices are sorted by their position along the normal ``n``: ``d_k = n . IPP_k``. The series is
refused when the steps ``d_{k+1} - d_k`` are not all equal (a gap, a missing or doubled slice),
or when the positions leave the line ``IPP_0 + d * n`` (gantry tilt / shear), because a volume
with one nominal spacing would put those slices at the wrong place.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.errors import InvalidDicomError

from deconvseg.pipeline.errors import InputError
from deconvseg.pipeline.io.checks import check_geometry, check_size
from deconvseg.pipeline.volume import Kind, Volume

log = logging.getLogger(__name__)

DICOMDIR_CLASS = "1.2.840.10008.1.3.10"  # Media Storage Directory: the only DICOM file without a SOP Class UID
SPACING_TOLERANCE_MM = 0.01  # plus 1 % of the step: what rounding in exported headers produces


@dataclass(frozen=True)
class _Slice:
    path: Path
    header: pydicom.Dataset

    @property
    def series_uid(self) -> str:
        return str(self.header.get("SeriesInstanceUID", "") or "")


def read_dicom_series(
    path: str | Path, *, series_uid: str | None = None, max_voxels: int, kind: Kind = "image"
) -> Volume:
    """Read one image series from a folder (searched recursively) or from one of its files.

    Args:
        path: a folder, or a DICOM file whose series should be read (its folder is searched).
        series_uid: the SeriesInstanceUID to read; default the series with most slices.
        max_voxels: refuse series with more voxels (from the headers, before any pixel is read).
        kind: ``"image"`` or ``"label"``.

    Raises:
        InputError: no DICOM image series here, the UID is absent, two largest series of equal
            size and no ``series_uid`` (ambiguous), slice gaps or
            non-uniform spacing, mixed slice sizes/orientations, or undecodable pixels.
    """
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    if path.is_file() and series_uid is None:
        try:
            series_uid = str(pydicom.dcmread(path, stop_before_pixels=True).get("SeriesInstanceUID", "") or "")
        except (InvalidDicomError, OSError, ValueError, EOFError, KeyError, TypeError) as err:
            raise InputError(
                path,
                f"corrupt DICOM file: its header cannot be read ({type(err).__name__})",
                "re-copy or re-export the file",
            ) from err
    images, others = _scan(folder)
    if not images:
        found = f"found only non-image objects ({', '.join(sorted(others))})" if others else "found no DICOM files"
        raise InputError(folder, f"no DICOM image series: {found}", "pass the folder of a CT/MR image series")
    series: dict[str, list[_Slice]] = defaultdict(list)
    for item in images:
        series[item.series_uid].append(item)
    chosen = _choose(folder, series, series_uid)
    slices = _sort_and_check(folder, series[chosen])
    first = slices[0].header
    rows, cols = int(first.Rows), int(first.Columns)
    check_size(folder, (cols, rows, len(slices)), 1, max_voxels)
    geometry = _geometry(slices)
    check_geometry(folder, geometry["spacing"], geometry["direction"])
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(s.path) for s in slices])
    try:
        array = sitk.GetArrayFromImage(reader.Execute())
    except RuntimeError as err:
        bad = _first_undecodable(slices)
        raise InputError(
            bad or folder,
            "pixel data cannot be decoded (truncated or corrupt file)",
            "re-copy or re-export this file" if bad else "re-export or re-copy the series",
        ) from err
    if array.shape != (len(slices), rows, cols):
        raise InputError(folder, f"pixel data shape {array.shape} does not match the headers", "re-export the series")
    return Volume(array, kind=kind, metadata=_metadata(folder, slices), **geometry)


def _first_undecodable(slices: list[_Slice]) -> Path | None:
    """The first slice whose pixels GDCM cannot decode on their own (searched only after a series failed)."""
    for item in slices:
        try:
            sitk.ReadImage(str(item.path))
        except RuntimeError:
            return item.path
    return None


def _scan(folder: Path) -> tuple[list[_Slice], dict[str, int]]:
    """Image slices under ``folder``, and a count of the non-image DICOM objects by kind."""
    images: list[_Slice] = []
    others: dict[str, int] = defaultdict(int)
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        try:
            header = pydicom.dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, OSError, ValueError, EOFError, KeyError, TypeError) as err:
            if _has_dicom_magic(path):  # claims to be DICOM: a damaged slice, not a stray file
                raise InputError(
                    path,
                    f"corrupt DICOM file: its header cannot be read ({type(err).__name__})",
                    "re-copy or re-export this file, or remove it from the series folder",
                ) from err
            continue  # not DICOM (a README, a DICOMDIR index without preamble, ...)
        if "SOPClassUID" not in header and _media_class(header) != DICOMDIR_CLASS:
            raise InputError(
                path,
                "corrupt or truncated DICOM file: its header ends before the SOP Class UID",
                "re-copy or re-export this file, or remove it from the series folder",
            )
        has_geometry = all(key in header for key in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"))
        if has_geometry and "Rows" in header and int(header.get("NumberOfFrames", 1) or 1) == 1:
            images.append(_Slice(path, header))
        else:
            others[_kind_name(header)] += 1
    return images, {f"{name} x{n}": n for name, n in others.items()}


def _media_class(header: pydicom.Dataset) -> str:
    return str(getattr(header.get("file_meta", None), "MediaStorageSOPClassUID", "") or "")


def _has_dicom_magic(path: Path) -> bool:
    try:
        with path.open("rb") as handle:
            handle.seek(128)
            return handle.read(4) == b"DICM"
    except OSError:
        return False


def _kind_name(header: pydicom.Dataset) -> str:
    uid = header.get("SOPClassUID") or getattr(header.get("file_meta", None), "MediaStorageSOPClassUID", "")
    if int(header.get("NumberOfFrames", 1) or 1) > 1:
        return f"multi-frame {header.get('Modality', '?')}"
    return getattr(uid, "name", str(uid)) or str(header.get("Modality", "unknown"))


def _choose(folder: Path, series: dict[str, list[_Slice]], series_uid: str | None) -> str:
    if series_uid is not None:
        if series_uid not in series:
            raise InputError(folder, f"no series with UID '{series_uid}'", f"choose one of {sorted(series)}")
        return series_uid
    chosen = max(series, key=lambda uid: len(series[uid]))
    ties = sorted(uid for uid in series if len(series[uid]) == len(series[chosen]))
    if len(ties) > 1:  # e.g. two interleaved acquisitions: picking one would be a guess
        raise InputError(
            folder,
            f"holds {len(ties)} series of {len(series[chosen])} slices each ({', '.join(ties)})",
            "choose one with series_uid (deconvseg info --series-uid) or give each its own folder",
        )
    if len(series) > 1:
        log.warning(
            "%s holds %d series; reading the largest, %r (%d slices); pass series_uid to choose another",
            folder,
            len(series),
            chosen,
            len(series[chosen]),
        )
    return chosen


def _normal(header: pydicom.Dataset) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    iop = np.asarray(header.ImageOrientationPatient, dtype=float)
    row, col = iop[:3], iop[3:]
    return row, col, np.cross(row, col)


def _check_slice_header(item: _Slice) -> None:
    """Refuse a slice whose geometry tags are malformed, zero, NaN, singular or not orthonormal."""
    h = item.header
    try:
        iop = np.asarray(h.ImageOrientationPatient, dtype=float)
        ipp = np.asarray(h.ImagePositionPatient, dtype=float)
        pixel = np.asarray(h.PixelSpacing, dtype=float)
        size = (int(h.Rows), int(h.Columns))
    except (ValueError, TypeError) as err:
        raise InputError(
            item.path,
            "malformed geometry tags (ImageOrientationPatient, ImagePositionPatient, PixelSpacing, Rows or Columns)",
            "re-export the series",
        ) from err
    if iop.shape != (6,) or ipp.shape != (3,) or pixel.shape != (2,):
        raise InputError(
            item.path,
            f"geometry tags have the wrong number of values (orientation {iop.size}, "
            f"position {ipp.size}, pixel spacing {pixel.size})",
            "re-export the series",
        )
    if not np.all(np.isfinite(ipp)):
        raise InputError(item.path, "ImagePositionPatient is not a finite number", "re-export the series")
    check_size(item.path, (size[1], size[0], 1), 1, max_voxels=2**62)
    row, col = iop[:3], iop[3:]
    check_geometry(
        item.path, (pixel[1], pixel[0], 1.0), np.column_stack([row, col, np.cross(row, col)]), where=" (PixelSpacing)"
    )


def _sort_and_check(folder: Path, slices: list[_Slice]) -> list[_Slice]:
    for item in slices:
        _check_slice_header(item)
    first = slices[0].header
    layout = (int(first.Rows), int(first.Columns), tuple(np.round(first.ImageOrientationPatient, 4)))
    for item in slices:
        h = item.header
        if (int(h.Rows), int(h.Columns), tuple(np.round(h.ImageOrientationPatient, 4))) != layout:
            raise InputError(
                folder,
                f"series mixes slice sizes or orientations ({item.path.name})",
                "export each orientation as its own series",
            )
    _, _, normal = _normal(first)
    positions = np.array([np.asarray(s.header.ImagePositionPatient, dtype=float) for s in slices])
    distance = positions @ normal
    order = np.argsort(distance, kind="stable")
    slices, positions, distance = [slices[i] for i in order], positions[order], distance[order]
    if len(slices) < 2:
        return slices
    steps = np.diff(distance)
    step = float(np.median(steps))
    worst = int(np.argmax(np.abs(steps - step)))
    if step <= 0 or abs(steps[worst] - step) > SPACING_TOLERANCE_MM + 0.01 * step:
        pair = f"{slices[worst].path.name}, {slices[worst + 1].path.name}"
        if steps[worst] < SPACING_TOLERANCE_MM:
            raise InputError(
                folder,
                f"two slices at the same position ({pair})",
                "the series holds several volumes (phases or echoes): export each as its own series",
            )
        raise InputError(
            folder,
            f"gap or non-uniform slice spacing: {steps[worst]:.2f} mm between slices {worst} and "
            f"{worst + 1} ({pair}), expected {step:.2f} mm",
            "re-export the complete series or pass a series without missing slices",
        )
    off_line = positions - positions[0] - np.outer(distance - distance[0], normal)
    if np.abs(off_line).max() > SPACING_TOLERANCE_MM + 0.01 * step:
        raise InputError(
            folder,
            "slice positions leave the slice normal (gantry tilt or sheared series)",
            "resample the series to an orthogonal grid before reading it",
        )
    return slices


def _geometry(slices: list[_Slice]) -> dict:
    first = slices[0].header
    row, col, normal = _normal(first)
    pixel = [float(v) for v in first.PixelSpacing]  # (between rows = y, between columns = x)
    if len(slices) > 1:
        d = [float(np.asarray(s.header.ImagePositionPatient, dtype=float) @ normal) for s in slices]
        step = (d[-1] - d[0]) / (len(slices) - 1)
    else:
        step = float(first.get("SpacingBetweenSlices") or first.get("SliceThickness") or 1.0)
    return {
        "spacing": (pixel[1], pixel[0], step),
        "origin": tuple(float(v) for v in first.ImagePositionPatient),
        "direction": np.column_stack([row, col, normal]),
    }


def _metadata(folder: Path, slices: list[_Slice]) -> dict:
    first = slices[0].header

    def text(key: str) -> str:
        return str(first.get(key, "") or "")

    return {
        "modality": text("Modality") or None,
        "source": str(folder),
        "dicom_files": [str(s.path) for s in slices],
        "series_instance_uid": text("SeriesInstanceUID"),
        "study_instance_uid": text("StudyInstanceUID"),
        "frame_of_reference_uid": text("FrameOfReferenceUID"),
        "sop_instance_uids": [str(s.header.get("SOPInstanceUID", "") or "") for s in slices],
        "patient_id": text("PatientID"),
        "study_date": text("StudyDate"),
        "study_description": text("StudyDescription"),
        "series_date": text("SeriesDate") or text("AcquisitionDate"),
        "series_description": text("SeriesDescription"),
        "slice_thickness": float(first.SliceThickness) if first.get("SliceThickness") not in (None, "") else None,
    }
