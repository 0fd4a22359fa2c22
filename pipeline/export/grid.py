"""Put a label or uncertainty map on the image's grid when that loses nothing.

Label maps from other tools often hold the same voxels as the image in another storage order
(TotalSegmentator writes LAS NIfTI for an LPS DICOM series). When the index mapping between the
two grids is a signed axis permutation with an integer offset, nearest-neighbour resampling is an
exact re-indexing; anything else would interpolate labels, so it is refused with a fix.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from deconvseg.pipeline.errors import InputError
from deconvseg.pipeline.io.sitk_bridge import from_sitk, to_sitk
from deconvseg.pipeline.volume import Volume


def align_to_image(volume: Volume, image: Volume, *, atol: float = 1e-3) -> Volume:
    """``volume`` on ``image``'s grid (the same object when it already is).

    Raises:
        InputError: the grids differ by more than a flip or an axis permutation.
    """
    if volume.same_grid(image):
        return volume
    to_volume = np.linalg.inv(volume.affine_lps()) @ image.affine_lps()  # image index -> volume index
    linear, offset = to_volume[:3, :3], to_volume[:3, 3]
    corners = np.array(
        [[i, j, k] for i in (0, image.size[0] - 1) for j in (0, image.size[1] - 1) for k in (0, image.size[2] - 1)],
        dtype=float,
    )
    mapped = corners @ linear.T + offset
    exact = (
        np.allclose(linear, np.round(linear), atol=atol)
        and np.allclose(np.abs(linear).sum(axis=0), 1, atol=atol)
        and np.allclose(offset, np.round(offset), atol=atol)
        and (mapped > -atol).all()
        and (mapped < np.asarray(volume.size) - 1 + atol).all()
        and sorted(volume.size) == sorted(image.size)
    )
    if not exact:
        raise InputError(
            volume.metadata.get("source", "label map"),
            "not on the image's voxel grid",
            "resample it onto the image grid (nearest neighbour) before exporting",
        )
    grid = sitk.Image(list(image.size), sitk.sitkUInt8)
    grid.SetSpacing(image.spacing)
    grid.SetOrigin(image.origin)
    grid.SetDirection(tuple(image.direction.ravel()))
    resampled = sitk.Resample(to_sitk(volume), grid, sitk.Transform(), sitk.sitkNearestNeighbor, 0.0, sitk.sitkUnknown)
    return from_sitk(resampled, kind=volume.kind, **volume.metadata)
