"""Checks every reader shares, made from header values before pixels are loaded, and the format suffixes."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from deconvseg.pipeline.errors import InputError
from deconvseg.pipeline.volume import Volume

DEFAULT_MAX_VOXELS = 1_000_000_000  # ~4 GB as float32; raise it explicitly for larger volumes
IMAGE_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")


def suffix_of(path: str | Path) -> str:
    """The format suffix of a path, keeping ``.nii.gz`` whole (lower case)."""
    name = Path(path).name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else Path(name).suffix


def strip_suffix(name: str) -> str:
    """``name`` without its volume-format suffix (``scan.nii.gz`` -> ``scan``); other names unchanged."""
    suffix = suffix_of(name)
    return name[: -len(suffix)] if suffix in IMAGE_SUFFIXES else name


def check_size(path: str | Path, size: tuple[int, ...], components: int, max_voxels: int) -> None:
    """Refuse zero-size axes and volumes above ``max_voxels`` (from header values)."""
    if any(n == 0 for n in size):
        raise InputError(path, f"zero-size axis in image size {list(size)}", "re-export the volume")
    voxels = int(np.prod(size, dtype=object)) * components
    if voxels > max_voxels:
        raise InputError(
            path,
            f"{voxels:.3g} voxels exceed the limit of {max_voxels:.3g}",
            "crop or downsample the volume, or raise the limit (max_voxels, memory_budget_mib)",
        )


def check_finite(volume: Volume, path: str | Path) -> None:
    """Refuse NaN or infinite voxels (they would poison every statistic downstream)."""
    if np.issubdtype(volume.array.dtype, np.floating):
        bad = volume.array.size - int(np.count_nonzero(np.isfinite(volume.array)))
        if bad:
            raise InputError(path, f"volume contains {bad} NaN/Inf voxels", "fix the export or fill them first")


GEOMETRY_FIX = "fix the header's spacing and orientation, or re-export the volume"


def check_geometry(
    path: str | Path, spacing: Sequence[float], direction: Sequence[float] | np.ndarray, where: str = ""
) -> None:
    """Refuse geometry that would put voxels nowhere or make every mm and mL up.

    Args:
        path: the file the geometry was read from (named in the message).
        spacing: voxel size per axis (x, y, z), as the header declares it.
        direction: the direction matrix (columns: axis directions), flat or square.
        where: the header field, e.g. ``" (pixdim)"``, added to the message.

    Raises:
        InputError: a NaN/infinite, zero or negative spacing; a NaN, singular (parallel or zero
            axes) or non-orthonormal direction matrix.
    """
    values = [float(s) for s in spacing]
    if not all(np.isfinite(values)):
        raise InputError(path, f"voxel spacing{where} {values} is not a finite number", GEOMETRY_FIX)
    if any(s <= 0 for s in values):
        raise InputError(path, f"zero or negative voxel spacing{where} {values}", GEOMETRY_FIX)
    matrix = np.asarray(direction, dtype=float)
    n = int(round(np.sqrt(matrix.size)))
    matrix = matrix.reshape(n, n)
    if not np.all(np.isfinite(matrix)):
        raise InputError(path, "direction matrix holds NaN or infinite values", GEOMETRY_FIX)
    if abs(np.linalg.det(matrix)) < 1e-6:
        raise InputError(
            path, f"singular direction matrix {np.round(matrix, 4).tolist()} (parallel or zero axes)", GEOMETRY_FIX
        )
    if not np.allclose(matrix.T @ matrix, np.eye(n), atol=1e-3):
        raise InputError(
            path,
            f"direction matrix {np.round(matrix, 4).tolist()} is not orthonormal (sheared or scaled axes)",
            "resample the volume to an orthogonal grid first",
        )


MAX_LABEL = int(np.iinfo(np.uint32).max)  # the widest label type every writer here stores (NIfTI, NRRD, RTSTRUCT)


def label_dtype(max_value: int) -> type[np.unsignedinteger]:
    """The smallest unsigned type that holds label values up to ``max_value`` (uint8, uint16 or uint32).

    Raises:
        ValueError: ``max_value`` is above ``MAX_LABEL`` (callers refuse such maps at read).
    """
    for dtype in (np.uint8, np.uint16, np.uint32):
        if max_value <= np.iinfo(dtype).max:
            return dtype
    raise ValueError(f"label value {max_value} does not fit in uint32")


def check_label_values(array: np.ndarray, path: str | Path) -> tuple[int, int]:
    """Refuse label maps with negative values or values above ``MAX_LABEL``; their ``(min, max)``.

    Made on the values as read (integers or whole floats), before any conversion or allocation
    that depends on the largest value.
    """
    if array.size == 0:
        return 0, 0
    low, high = array.min(), array.max()
    if low < 0:
        raise InputError(
            path,
            f"label map holds negative values (smallest {low})",
            "labels must be 0 (background) or positive integers; renumber them",
        )
    if high > MAX_LABEL:
        raise InputError(
            path,
            f"label value {high} is above the largest supported label {MAX_LABEL} (uint32)",
            "renumber the labels to smaller values",
        )
    return int(low), int(high)
