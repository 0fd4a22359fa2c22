"""Resampling: extent-preserving grids, nearest for labels, nnU-Net's anisotropic rule, exact return to the input grid."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from deconvseg.pipeline.phantoms import make_phantom
from deconvseg.pipeline.resample import grid_at_spacing, is_anisotropic, resample_to_grid, resample_to_spacing
from deconvseg.pipeline.volume import Volume

SMALL = {"shape": (20, 40, 40), "spacing": (5.0, 5.0, 8.0)}


def _world_centroid(label: Volume, value: int) -> np.ndarray:
    return label.index_to_world(np.argwhere(label.array == value)[:, ::-1]).mean(axis=0)


def _oblique(volume: Volume) -> Volume:
    rotation = Rotation.from_euler("xyz", [15, -10, 30], degrees=True).as_matrix()
    return Volume(volume.array, volume.spacing, (12.0, -30.0, 7.5), rotation, volume.kind, volume.metadata)


def test_new_grid_keeps_the_physical_extent():
    image, _ = make_phantom("CT", seed=0, **SMALL)
    image = _oblique(image)
    grid = grid_at_spacing(image, (2.5, 2.0, 3.0))
    assert grid.size == (80, 100, 53)
    np.testing.assert_allclose(grid.direction, image.direction)
    corner = lambda v: v.index_to_world([-0.5, -0.5, -0.5])[0]  # noqa: E731  (outer edge of voxel 0)
    np.testing.assert_allclose(corner(grid), corner(image), atol=1e-9)


@pytest.mark.parametrize("oblique", [False, True])
def test_label_round_trip_lands_exactly_on_the_input_grid(oblique):
    _, label = make_phantom("CT", shape=(32, 64, 64), spacing=(3.0, 3.0, 5.0), seed=1)
    label = _oblique(label) if oblique else label
    coarse = resample_to_spacing(label, (4.5, 4.0, 6.0))
    assert coarse.array.dtype == label.array.dtype and set(np.unique(coarse.array)) <= set(np.unique(label.array))
    back = resample_to_grid(coarse, label)
    assert back.same_grid(label, atol=1e-9) and back.kind == "label"
    for value in (1, 2, 3, 4):
        a, b = label.array == value, back.array == value
        assert 2 * np.count_nonzero(a & b) / (a.sum() + b.sum()) > 0.8
        np.testing.assert_allclose(_world_centroid(back, value), _world_centroid(label, value), atol=3.0)


def test_image_round_trip_through_a_finer_grid_keeps_intensities():
    image, _ = make_phantom("MR", seed=2, blur_mm=6.0, **SMALL)
    fine = resample_to_spacing(image, (2.5, 2.5, 4.0))
    assert fine.array.dtype == np.float32 and fine.shape == (40, 80, 80)
    back = resample_to_grid(fine, image, order=3)
    assert back.same_grid(image, atol=1e-9)
    inner = (slice(2, -2),) * 3
    error = np.abs(back.array[inner] - image.array[inner])
    assert np.median(error) < 0.02 * float(np.ptp(image.array))


def test_same_grid_is_an_exact_copy():
    image, label = make_phantom("CT", seed=3, **SMALL)
    for volume in (image, label):
        moved = resample_to_grid(volume, image)
        assert moved.array is not volume.array
        np.testing.assert_array_equal(moved.array, volume.array)


def test_anisotropic_images_use_nearest_along_the_thick_axis():
    assert is_anisotropic((1.0, 1.0, 5.0)) and not is_anisotropic((1.0, 1.0, 3.0))
    rng = np.random.default_rng(0)
    image = Volume(rng.normal(size=(6, 16, 16)).astype(np.float32), spacing=(1.0, 1.0, 5.0))
    out = resample_to_spacing(image, (0.5, 0.5, 2.5))
    assert out.shape == (12, 32, 32)
    # Along z every output slice is a copy of one in-plane-resampled input slice (pairs of equals) ...
    for k in range(0, 12, 2):
        np.testing.assert_array_equal(out.array[k], out.array[k + 1])
    # ... whereas the isotropic path interpolates along z too.
    iso = Volume(image.array, spacing=(1.0, 1.0, 2.0))
    smooth = resample_to_spacing(iso, (0.5, 0.5, 1.0))
    assert not np.array_equal(smooth.array[4], smooth.array[5])


def test_bad_orders_are_refused():
    image, label = make_phantom("CT", seed=0, **SMALL)
    with pytest.raises(ValueError, match="nearest neighbour only"):
        resample_to_grid(label, image, order=1)
    with pytest.raises(ValueError, match="order must be 0, 1 or 3"):
        resample_to_grid(image, grid_at_spacing(image, (4.0, 4.0, 4.0)), order=2)
