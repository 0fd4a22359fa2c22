"""Convert between ``Volume`` and SimpleITK images (same voxels, same geometry; see ``volume``)."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from deconvseg.pipeline.volume import Kind, Volume


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
