"""Sliding-window stitching, predictor switches and the bounded-memory restore to the input grid."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from deconvseg.models.deconvnet3d import DeconvNet3d
from deconvseg.pipeline.inference import (fitted_window, gaussian_importance, prepare_predictor, sliding_window,
                                          window_starts)
from deconvseg.pipeline.io.sitk_bridge import to_sitk
from deconvseg.pipeline.resample import grid_coordinates, restore_labels, restore_map
from deconvseg.pipeline.volume import Volume

OBLIQUE = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, -1.0]])


@pytest.mark.parametrize("shape", [(13, 20, 31), (5, 6, 7)])
@pytest.mark.parametrize("batch_size,mirror", [(1, ()), (3, (0, 2))])
def test_stitching_of_2x_is_exact(rng, shape, batch_size, mirror):
    image = rng.normal(size=(2, *shape)).astype(np.float32)
    out = sliding_window(image, lambda x: 2 * x, (8, 8, 8), overlap=0.5, batch_size=batch_size, mirror_axes=mirror)
    assert out.shape == image.shape
    np.testing.assert_allclose(out.numpy(), 2 * image, rtol=1e-5, atol=1e-5)


def test_stitching_of_a_3d_image_and_a_two_scale_predictor(rng):
    image = rng.normal(size=(9, 14, 11)).astype(np.float32)
    out = sliding_window(image, lambda local, context: local + context, (4, 6, 6), overlap=0.25, context_factor=(1, 1, 1))
    np.testing.assert_allclose(out.numpy()[0], 2 * image, rtol=1e-5, atol=1e-5)


def test_two_scale_context_is_coarser_than_local(rng):
    image = rng.normal(size=(9, 14, 11)).astype(np.float32)
    seen = []

    def predictor(local, context):
        seen.append((local.shape, context.shape, float(context.std()), float(local.std())))
        return local

    sliding_window(image, predictor, (4, 6, 6), context_factor=(1, 3, 3))
    assert all(ls == cs for ls, cs, _, _ in seen)
    assert np.mean([c for _, _, c, _ in seen]) < np.mean([l for _, _, _, l in seen])  # averaging smooths noise


def test_windows_and_weights():
    assert window_starts(10, 16, 0.5) == [0]
    starts = window_starts(100, 32, 0.5)
    assert starts[0] == 0 and starts[-1] == 68 and max(np.diff(starts)) <= 16
    weights = gaussian_importance((8, 12, 16))
    assert weights.shape == (8, 12, 16) and float(weights.min()) > 0 and float(weights.max()) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="overlap"):
        sliding_window(np.zeros((4, 4, 4), np.float32), lambda x: x, (2, 2, 2), overlap=1.0)


@pytest.mark.parametrize("shape,patch,overlap", [((232, 204, 253), (96, 96, 96), 0.125), ((232, 204, 253), (96, 96, 96), 0.5),
                                                 ((10, 200, 190), (2, 128, 128), 0.5), ((60, 50, 40), (96, 96, 96), 0.5),
                                                 ((112, 101, 122), (40, 72, 72), 0.25)])
def test_fitted_windows_cover_the_region_with_fewer_voxels(shape, patch, overlap):
    window = fitted_window(shape, patch, overlap)
    counts = [len(window_starts(n, w, overlap)) for n, w in zip(shape, window)]
    before = [len(window_starts(n, p, overlap)) for n, p in zip(shape, patch)]
    assert all(w >= p and w % min(p & -p, 16) == 0 for w, p in zip(window, patch))  # the patch's stride kept
    assert np.prod(window) <= 2.5 * np.prod(patch)
    assert np.prod(counts) * np.prod(window) <= np.prod(before) * np.prod(patch)
    starts = [window_starts(n, w, overlap) for n, w in zip(shape, window)]
    assert all(s[0] == 0 and s[-1] + w >= n for s, w, n in zip(starts, window, shape))  # every voxel covered
    if shape == (232, 204, 253) and overlap == 0.125:
        assert np.prod(counts) * np.prod(window) < 0.75 * np.prod(before) * np.prod(patch)


def test_speed_switches_keep_the_network_output(rng):
    torch.manual_seed(0)
    net = DeconvNet3d(1, 3, widths=(4, 8)).eval()
    x = torch.from_numpy(rng.normal(size=(1, 1, 8, 12, 12)).astype(np.float32))
    plain = prepare_predictor(net)(x)
    fast = prepare_predictor(net, channels_last=True)(x)
    np.testing.assert_allclose(fast.numpy(), plain.numpy(), atol=1e-4)
    bf16 = prepare_predictor(net, bf16=True, channels_last=True)(x)
    assert bf16.dtype == torch.float32
    assert float((bf16 - plain).abs().max()) < 0.1 * float(plain.abs().max())


def _grids() -> tuple[Volume, Volume]:
    source = Volume(np.zeros((6, 7, 9), np.uint8), spacing=(3.0, 2.5, 4.0), origin=(1.0, 2.0, 3.0), direction=OBLIQUE)
    target = Volume(np.zeros((15, 20, 25), np.uint8), spacing=(1.1, 0.9, 1.7), origin=(0.0, 1.5, 2.0), direction=OBLIQUE)
    return source, target


def _sitk_linear(values: np.ndarray, source: Volume, target: Volume) -> np.ndarray:
    moved = sitk.Resample(to_sitk(source.with_array(values.astype(np.float32))), to_sitk(target), sitk.Transform(),
                          sitk.sitkLinear, -1.0, sitk.sitkFloat32)
    return sitk.GetArrayFromImage(moved)


def test_restore_map_equals_simpleitk_linear_inside_the_source(rng):
    source, target = _grids()
    values = rng.random(source.shape).astype(np.float32)
    ours = restore_map(values, source, target, slab=4)
    theirs = _sitk_linear(values, source, target)
    inside = theirs != -1.0
    assert inside.mean() > 0.5
    np.testing.assert_allclose(ours[inside], theirs[inside], atol=1e-5)


def test_bounded_restore_equals_a_direct_restore(rng):
    source, target = _grids()
    labels = rng.integers(0, 4, source.shape).astype(np.uint8)
    labels[labels == 2] = 7  # values need not be contiguous
    confidence = rng.uniform(0.3, 1.0, source.shape).astype(np.float32)
    # Direct: every class's masked score resampled at once (SimpleITK), then arg-max.
    present = np.unique(labels)
    scores = np.stack([_sitk_linear(np.where(labels == v, confidence, 0), source, target) for v in present])
    direct = present[scores.argmax(0)]
    inside = scores[0] != -1.0
    for slab, dense, threads in [(2, 0.0, 1), (4, 1.1, 1), (target.shape[0], 0.25, 1), (2, 0.0, 2), (3, 1.1, 3)]:
        bounded = restore_labels(labels, confidence, source, target, slab=slab, dense_fraction=dense, threads=threads)
        assert bounded.dtype == np.uint8 and bounded.shape == target.shape
        np.testing.assert_array_equal(bounded[inside], direct[inside])


def test_restore_takes_only_neighbouring_labels_and_is_identity_on_the_same_grid(rng):
    source, _ = _grids()
    labels = np.zeros(source.shape, np.uint8)
    labels[2:4, 2:5, 3:6] = 5
    confidence = np.full(source.shape, 0.9, np.float32)
    same = restore_labels(labels, confidence, source, source)
    np.testing.assert_array_equal(same, labels)
    fine = Volume(np.zeros((24, 28, 36), np.uint8), spacing=(0.75, 0.625, 1.0), origin=source.origin, direction=OBLIQUE)
    up = restore_labels(labels, confidence, source, fine)
    assert set(np.unique(up)) == {0, 5}
    zc, yc, xc = grid_coordinates(source, fine)
    far = (np.abs(zc - 2.5)[:, None, None] > 2) | (np.abs(yc - 3)[None, :, None] > 2) | (np.abs(xc - 4)[None, None, :] > 2)
    assert not up[far].any()


@pytest.mark.parametrize("new_spacing", [(3.0, 3.0, 3.0), (3.0, 2.0, 3.0), (0.5, 0.7, 1.3)])
def test_restore_from_an_edge_aligned_working_grid_equals_simpleitk(rng, new_spacing):
    from deconvseg.pipeline.resample import grid_at_spacing

    target = Volume(np.zeros((20, 31, 35), np.uint8), spacing=(0.8, 0.9, 1.5), origin=(3.0, 4.0, 5.0), direction=OBLIQUE)
    source = grid_at_spacing(target, new_spacing)  # the grid segment_case infers on
    values = rng.random(source.shape).astype(np.float32)
    theirs = _sitk_linear(values, source, target)
    inside = theirs != -1.0
    np.testing.assert_allclose(restore_map(values, source, target, slab=4)[inside], theirs[inside], atol=1e-5)
    labels = rng.integers(0, 3, source.shape).astype(np.uint8)
    dense = restore_labels(labels, values, source, target, slab=3, dense_fraction=0.0)
    sparse = restore_labels(labels, values, source, target, slab=3, dense_fraction=1.1)
    np.testing.assert_array_equal(dense, sparse)
