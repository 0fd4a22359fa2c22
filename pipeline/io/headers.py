"""Geometry read from a file's own header, before a library reads (and silently repairs) it.

ITK turns a NIfTI ``dim`` of 0 into an axis of size 1 and a ``pixdim`` of 0 into 1 mm, and its
MetaImage reader stops at a NaN and then fails as "corrupt". Reading the header fields here lets
every reader refuse such files with the real reason, naming the field
(``deconvseg.pipeline.io.checks.check_geometry``).
"""

from __future__ import annotations

import gzip
import io
from pathlib import Path

import nibabel as nib
import numpy as np

from deconvseg.pipeline.errors import InputError
from deconvseg.pipeline.io.checks import check_geometry, suffix_of

_HEADER_FIX = "re-export the volume with a valid header"
_META_GEOMETRY = ("DimSize", "ElementSpacing", "ElementSize", "TransformMatrix", "Rotation", "Orientation")


def check_header_geometry(path: Path) -> None:
    """Check the declared sizes and geometry of a NIfTI or MetaImage header (other formats: nothing).

    Raises:
        InputError: a zero or negative axis size, a zero/negative/NaN spacing, or a singular,
            NaN or non-orthonormal direction, with the header field named.
    """
    suffix = suffix_of(path)
    if suffix in (".nii", ".nii.gz"):
        _check_nifti(path)
    elif suffix in (".mha", ".mhd"):
        _check_metaimage(path)


def _check_nifti(path: Path) -> None:
    opener = gzip.open if suffix_of(path) == ".nii.gz" else open
    try:
        with opener(path, "rb") as handle:
            raw = handle.read(540)
    except (OSError, EOFError):
        return  # the reader reports an unreadable file with its own message
    header_class = _nifti_header_class(raw)
    if header_class is None:
        return  # not a NIfTI header: the reader says so
    size = header_class.template_dtype.itemsize
    try:  # the extension flag is zeroed: extensions hold no geometry
        header = header_class.from_fileobj(io.BytesIO(raw[:size] + bytes(4)), check=False)
    except (nib.spatialimages.HeaderDataError, ValueError, EOFError):
        return
    dim, pixdim = header["dim"], header["pixdim"]
    ndim = int(dim[0])
    if not 1 <= ndim <= 7:
        raise InputError(path, f"NIfTI header dim[0] = {ndim} is not a number of dimensions (1 to 7)", _HEADER_FIX)
    sizes = [int(n) for n in dim[1 : ndim + 1]]
    if any(n <= 0 for n in sizes):
        axis = next(i for i, n in enumerate(sizes, 1) if n <= 0)
        raise InputError(
            path, f"zero-size axis in image size {sizes} (NIfTI dim[{axis}] is {sizes[axis - 1]})", _HEADER_FIX
        )
    check_geometry(path, [float(v) for v in pixdim[1 : min(ndim, 3) + 1]], np.eye(1), where=" (NIfTI pixdim)")


def _nifti_header_class(raw: bytes) -> type[nib.Nifti1Header] | None:
    """NIfTI-1 or NIfTI-2 by ``sizeof_hdr`` and magic (either byte order); ``None`` for anything else."""
    sizeof_hdr = {int.from_bytes(raw[:4], "little"), int.from_bytes(raw[:4], "big")}
    if 348 in sizeof_hdr and raw[344:348] in (b"n+1\0", b"ni1\0"):
        return nib.Nifti1Header
    if 540 in sizeof_hdr and raw[4:8] in (b"n+2\0", b"ni2\0"):
        return nib.Nifti2Header
    return None


def _check_metaimage(path: Path) -> None:
    fields: dict[str, str] = {}
    try:
        with path.open("rb") as handle:
            for _ in range(64):  # a MetaImage header is a few dozen "Key = value" lines
                line = handle.readline(4096).decode("latin-1").strip()
                key, _, value = line.partition("=")
                fields[key.strip()] = value.strip()
                if key.strip() == "ElementDataFile" or not line:
                    break
    except OSError:
        return
    numbers = {}
    for key in _META_GEOMETRY:
        if key in fields:
            try:
                numbers[key] = [float(v) for v in fields[key].split()]
            except ValueError:
                raise InputError(
                    path, f"MetaImage {key} '{fields[key][:60]}' is not a list of numbers", _HEADER_FIX
                ) from None
    sizes = numbers.get("DimSize", [])
    if any(n <= 0 for n in sizes):
        raise InputError(
            path, f"zero-size axis in image size {[int(n) for n in sizes]} (MetaImage DimSize)", _HEADER_FIX
        )
    spacing_key = "ElementSpacing" if "ElementSpacing" in numbers else "ElementSize"
    direction_key = next((k for k in ("TransformMatrix", "Rotation", "Orientation") if k in numbers), None)
    spacing = numbers.get(spacing_key, [1.0])
    direction = numbers[direction_key] if direction_key else np.eye(1)
    if direction_key and round(np.sqrt(len(direction))) ** 2 != len(direction):
        raise InputError(
            path, f"MetaImage {direction_key} has {len(direction)} values (not a square matrix)", _HEADER_FIX
        )
    # MetaImage stores the matrix row by row with the axes as rows; the checks are transpose-invariant
    check_geometry(path, spacing, direction, where=f" (MetaImage {spacing_key})")
