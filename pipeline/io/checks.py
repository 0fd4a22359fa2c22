"""Checks every reader shares, made from header values before pixels are loaded, and the format suffixes."""

from __future__ import annotations

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
            path, f"{voxels:.3g} voxels exceed the limit of {max_voxels:.3g}",
            "crop or downsample the volume, or raise max_voxels",
        )


def check_finite(volume: Volume, path: str | Path) -> None:
    """Refuse NaN or infinite voxels (they would poison every statistic downstream)."""
    if np.issubdtype(volume.array.dtype, np.floating):
        bad = volume.array.size - int(np.count_nonzero(np.isfinite(volume.array)))
        if bad:
            raise InputError(path, f"volume contains {bad} NaN/Inf voxels", "fix the export or fill them first")
