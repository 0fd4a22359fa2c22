"""Read and write volumes: DICOM series, NIfTI, NRRD, MHA/MHD.

Geometry is read once here and written once at export; everything in between keeps the
``Volume``'s grid. See ``pipeline.volume`` for the axis convention.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from pipeline.errors import InputError
from pipeline.volume import Kind, Volume


def from_sitk(image: sitk.Image, kind: Kind = "image", **metadata: object) -> Volume:
    """Wrap a 3D SimpleITK image as a ``Volume`` (the array is copied out of ITK)."""
    return Volume(
        array=sitk.GetArrayFromImage(image),
        spacing=image.GetSpacing(),
        origin=image.GetOrigin(),
        direction=np.asarray(image.GetDirection()).reshape(3, 3),
        kind=kind,
        metadata=dict(metadata),
    )


def to_sitk(volume: Volume) -> sitk.Image:
    """The SimpleITK image of a ``Volume`` with the same voxels and geometry."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(volume.array))
    image.SetSpacing(volume.spacing)
    image.SetOrigin(volume.origin)
    image.SetDirection(tuple(volume.direction.ravel()))
    return image


def read_volume(path: str | Path, kind: Kind = "image") -> Volume:
    """Read a NIfTI, NRRD or MHA/MHD file into a ``Volume``.

    Raises:
        InputError: the path is missing or the file cannot be read as a 3D image.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(path, "no such file or folder", "check the path")
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as err:
        raise InputError(path, "unreadable or truncated image file", "re-export or re-copy the file") from err
    return from_sitk(image, kind=kind, source=str(path))


def write_volume(volume: Volume, path: str | Path, compress: bool = True) -> Path:
    """Write ``volume`` to ``path`` (format from the suffix) atomically: temp file, then rename."""
    path = Path(path)
    suffix = "".join(path.suffixes[-2:]) if path.name.endswith(".gz") else path.suffix
    fd, tmp = tempfile.mkstemp(suffix=suffix, prefix=".tmp-", dir=path.parent)
    os.close(fd)
    try:
        sitk.WriteImage(to_sitk(volume), tmp, useCompression=compress)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
