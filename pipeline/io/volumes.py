"""Read and write volumes: DICOM series folders, NIfTI, NRRD, MHA/MHD.

Geometry is read once here and written once at export; everything in between keeps the
``Volume``'s grid (see ``deconvseg.pipeline.volume`` for the axis convention). Every check that can be
made from the header -- size, dimensionality, channels, the voxel limit -- is made before
the pixels are loaded, so a file claiming 10^12 voxels is refused at once. NIfTI is written
with nibabel (about 4x faster than SimpleITK's .nii.gz writer here), everything else with
SimpleITK; every write goes to a temporary file in the target folder and is renamed into place.
"""

from __future__ import annotations

import gzip
import logging
import os
import struct
from pathlib import Path
from typing import cast

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from deconvseg.pipeline.errors import InputError
from deconvseg.pipeline.files import atomic_file
from deconvseg.pipeline.io.checks import (
    DEFAULT_MAX_VOXELS,
    IMAGE_SUFFIXES,
    check_finite,
    check_geometry,
    check_label_values,
    check_size,
    label_dtype,
    suffix_of,
)
from deconvseg.pipeline.io.dicom import read_dicom_series
from deconvseg.pipeline.io.headers import check_header_geometry
from deconvseg.pipeline.io.sitk_bridge import from_sitk, to_sitk
from deconvseg.pipeline.volume import Kind, Volume

log = logging.getLogger(__name__)


def read_volume(
    path: str | Path,
    kind: Kind = "image",
    *,
    series_uid: str | None = None,
    channel: int | None = None,
    max_voxels: int = DEFAULT_MAX_VOXELS,
) -> Volume:
    """Read a NIfTI/NRRD/MHA/MHD file, or a DICOM series folder (or one file of it).

    Args:
        path: an image file, a folder holding a DICOM series, or one DICOM file of a series.
        kind: ``"image"`` or ``"label"``; labels must hold integers.
        series_uid: which DICOM series to read when the folder holds several (default: the
            one with most slices, logged).
        channel: which channel of a 4D or multi-component image to keep.
        max_voxels: refuse volumes with more voxels (checked from the header).

    Returns:
        The volume; ``metadata`` holds ``source`` and ``modality`` (``None`` when the format
        does not store it) and, for DICOM, the series' UIDs and files (``deconvseg.pipeline.io.dicom``).

    Raises:
        InputError: missing path, unreadable/truncated/empty file, non-image DICOM, slice gaps,
            4D without ``channel``, NaN/Inf voxels, a zero-size axis or more than ``max_voxels``.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(path, "no such file or folder", "check the path")
    if path.is_dir() or _is_dicom_file(path):
        volume = read_dicom_series(path, series_uid=series_uid, max_voxels=max_voxels, kind=kind)
    else:
        volume = _read_image_file(path, kind, channel, max_voxels)
    check_finite(volume, path)
    if kind == "label":
        volume = _as_labels(volume, path)
    return volume


def _as_labels(volume: Volume, path: Path) -> Volume:
    """Labels checked (whole, 0..uint32) before any cast; floats become the smallest unsigned type that holds them."""
    array = volume.array
    integer = np.issubdtype(array.dtype, np.integer)
    if not integer and not np.array_equal(np.rint(array), array):
        raise InputError(path, "label map holds non-integer values", "pass a label map, or read it as kind='image'")
    _, high = check_label_values(array, path)
    return volume if integer else volume.with_array(array.astype(label_dtype(high)))


def _is_dicom_file(path: Path) -> bool:
    with path.open("rb") as handle:
        handle.seek(128)
        return handle.read(4) == b"DICM"


def _read_image_file(path: Path, kind: Kind, channel: int | None, max_voxels: int) -> Volume:
    if path.stat().st_size == 0:
        raise InputError(path, "empty file (0 bytes)", "re-export or re-copy the file")
    check_header_geometry(path)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as err:
        if suffix_of(path) in (".nii", ".nii.gz") and _is_sheared_nifti(path):
            raise InputError(
                path,
                "NIfTI affine is sheared (axes not orthogonal), which ITK cannot represent",
                "resample it to an orthogonal grid first (e.g. nibabel.processing.resample_from_to)",
            ) from err
        raise InputError(
            path,
            "not a readable NIfTI/NRRD/MHA image (wrong format, bad header or truncated)",
            "re-export the file as .nii.gz, .nrrd or .mha",
        ) from err
    size = tuple(int(n) for n in reader.GetSize())
    components = int(reader.GetNumberOfComponents())
    check_size(path, size, components, max_voxels)
    n = len(size)
    check_geometry(path, reader.GetSpacing()[:3], np.asarray(reader.GetDirection()).reshape(n, n)[:3, :3])
    if len(size) == 4 and size[3] == 1:
        channel = 0 if channel is None else channel
    channels = size[3] if len(size) == 4 else components
    if len(size) not in (3, 4) or (len(size) == 4 and components > 1):
        raise InputError(
            path, f"{len(size)}D image of size {list(size)}", "pass a 3D volume (or a 4D one with channel=)"
        )
    if channels > 1 or len(size) == 4:
        if channel is None:
            raise InputError(
                path,
                f"image has {channels} channels (4D or multi-component)",
                "choose one with --channel N (channel=N in Python)",
            )
        if not 0 <= channel < channels:
            raise InputError(
                path, f"channel {channel} does not exist (image has {channels})", f"choose 0..{channels - 1}"
            )
    if suffix_of(path) in (".nii", ".nii.gz"):
        proxy = _check_nifti_complete(path)
        if np.issubdtype(proxy.dtype, np.floating):
            # ITK's NIfTI reader turns NaN into 0; nibabel keeps them, so check_finite can see them.
            data = np.asarray(proxy[..., channel] if len(size) == 4 else proxy[...], dtype=proxy.dtype)
            return Volume(
                np.ascontiguousarray(data.T),  # NIfTI's [i, j, k] -> [z, y, x]
                spacing=reader.GetSpacing()[:3],
                origin=reader.GetOrigin()[:3],
                direction=np.asarray(reader.GetDirection()).reshape(n, n)[:3, :3],
                kind=kind,
                metadata={"source": str(path), "modality": None},
            )
    if len(size) == 4:
        reader.SetExtractIndex([0, 0, 0, channel])
        reader.SetExtractSize([*size[:3], 0])
    try:
        image = reader.Execute()
    except RuntimeError as err:
        raise InputError(
            path, "pixel data cannot be read (truncated or corrupt file)", "re-export or re-copy the file"
        ) from err
    if components > 1:
        image = sitk.VectorIndexSelectionCast(image, channel)
    return from_sitk(image, kind=kind, source=str(path), modality=None)


def _is_sheared_nifti(path: Path) -> bool:
    """True when nibabel reads the header and its affine's axes are not orthogonal."""
    try:
        axes = cast(nib.Nifti1Image, nib.load(path)).affine[:3, :3]
    except (nib.filebasedimages.ImageFileError, nib.spatialimages.HeaderDataError, OSError, ValueError, EOFError):
        return False
    unit = axes / np.linalg.norm(axes, axis=0)
    return not np.allclose(unit.T @ unit, np.eye(3), atol=1e-3)


def _check_nifti_complete(path: Path) -> nib.arrayproxy.ArrayProxy:
    """Refuse a truncated NIfTI (ITK's reader silently fills the missing voxels with zeros).

    Uncompressed: the file must hold ``vox_offset + voxels * itemsize`` bytes. Gzipped: the
    trailer's ISIZE (uncompressed length mod 2^32) must say so; if it does not (a truncated file,
    or a multi-member gzip), the stream is decompressed to the end to decide.
    """
    try:
        proxy = cast(nib.arrayproxy.ArrayProxy, cast(nib.Nifti1Image, nib.load(path)).dataobj)  # header only
    except (
        nib.filebasedimages.ImageFileError,
        nib.spatialimages.HeaderDataError,
        OSError,
        EOFError,
        ValueError,
    ) as err:
        # ITK read a header from the first bytes, nibabel cannot: the file ends inside or just after it
        raise InputError(
            path, "truncated or corrupt NIfTI: the header cannot be read whole", "re-copy or re-export the file"
        ) from err
    expected = int(proxy.offset) + int(np.prod(proxy.shape, dtype=np.int64)) * proxy.dtype.itemsize
    if suffix_of(path) == ".nii":
        complete = path.stat().st_size >= expected
    else:
        with path.open("rb") as handle:
            handle.seek(-4, os.SEEK_END)
            complete = struct.unpack("<I", handle.read(4))[0] == expected % 2**32
        if not complete:
            complete = _gzip_length(path) >= expected
    if not complete:
        raise InputError(
            path,
            f"truncated NIfTI: fewer than the {expected} bytes its header promises",
            "re-copy or re-export the file",
        )
    return proxy


def _gzip_length(path: Path) -> int:
    """Uncompressed length of a gzip file, or -1 when the stream ends early or is corrupt."""
    total = 0
    try:
        with gzip.open(path, "rb") as handle:
            while chunk := handle.read(1 << 24):
                total += len(chunk)
    except (EOFError, OSError, gzip.BadGzipFile):
        return -1
    return total


def write_volume(volume: Volume, path: str | Path, compress: bool = True, *, slope: float | None = None) -> Path:
    """Write ``volume`` to ``path`` atomically (temporary file in the same folder, then rename).

    NIfTI (``.nii``, ``.nii.gz``) is written by nibabel with the RAS affine in both qform and
    sform (code 1, scanner); NRRD and MHA/MHD by SimpleITK. The dtype is kept, except that
    bool becomes uint8 and float16 becomes float32 (no format here stores them).

    Args:
        slope: NIfTI only: the header's ``scl_slope``, so that readers see ``stored value * slope``
            (integer steps of a float map; nibabel, SimpleITK/ITK, Slicer and ITK-SNAP apply it).

    Raises:
        InputError: the suffix is not a supported format or the folder does not exist.
        ValueError: ``slope`` for a format other than NIfTI.
    """
    path = Path(path)
    suffix = suffix_of(path)
    if suffix not in IMAGE_SUFFIXES:
        raise InputError(path, f"unknown output format '{suffix}'", f"use one of {', '.join(IMAGE_SUFFIXES)}")
    if slope is not None and suffix not in (".nii", ".nii.gz"):
        raise ValueError(f"{path}: a scl_slope is a NIfTI field; write '.nii.gz' or no slope")
    if not path.parent.is_dir():
        raise InputError(path.parent, "output folder does not exist", "create it first")
    if volume.array.dtype in (np.bool_, np.float16):  # no format stores them; widen losslessly
        volume = volume.with_array(volume.array.astype(np.uint8 if volume.array.dtype == np.bool_ else np.float32))
    with atomic_file(path) as tmp:
        if suffix in (".nii", ".nii.gz"):
            _write_nifti(volume, str(tmp), slope)
        elif suffix == ".mhd":
            _write_mhd(volume, tmp, path, compress)
        else:
            sitk.WriteImage(to_sitk(volume), str(tmp), useCompression=compress)
    return path


def _write_nifti(volume: Volume, path: str, slope: float | None = None) -> None:
    array = volume.array
    # nibabel asks for an explicit dtype for 64-bit integers (some tools cannot read them).
    dtype = array.dtype if array.dtype in (np.int64, np.uint64) else None
    image = nib.Nifti1Image(array.T, volume.affine_ras(), dtype=dtype)  # [z, y, x] -> NIfTI's [i, j, k]
    image.set_qform(volume.affine_ras(), code=1)
    image.set_sform(volume.affine_ras(), code=1)
    image.header.set_xyzt_units("mm", "sec")
    if slope is not None:
        image.header.set_slope_inter(slope, 0.0)
    nib.save(image, path)


def _write_mhd(volume: Volume, tmp: Path, path: Path, compress: bool) -> None:
    """MHD keeps its pixels in a sibling ``.raw``/``.zraw`` named in the header; write both atomically."""
    raw_tmp = tmp.with_suffix(".zraw" if compress else ".raw")
    try:
        sitk.WriteImage(to_sitk(volume), str(tmp), useCompression=compress)
        raw = path.with_suffix(raw_tmp.suffix)
        header = tmp.read_text().replace(f"ElementDataFile = {raw_tmp.name}", f"ElementDataFile = {raw.name}")
        tmp.write_text(header)
        os.replace(raw_tmp, raw)
    finally:
        if raw_tmp.exists():
            raw_tmp.unlink()
