"""Patch crops, two-scale context crops, the foreground-oversampling sampler and augmentation."""

from __future__ import annotations

import numpy as np
import pytest

from deconvseg.pipeline.training.augment import AugmentConfig, AugmentParams, RandomAugment, apply_augment, gamma, rotate_scale
from deconvseg.pipeline.patches import PatchSampler, context_crop, crop_patch


def test_crop_patch_pads_outside_and_copies(rng):
    array = rng.normal(size=(5, 7, 9)).astype(np.float32)
    patch = crop_patch(array, (0, 3, 8), (3, 3, 4), pad_value=-9)
    assert patch.shape == (3, 3, 4)
    # z from -1..1, y 2..4, x 6..9: first z-plane and the last x-column are padding.
    assert np.all(patch[0] == -9) and np.all(patch[:, :, 3] == -9)
    np.testing.assert_array_equal(patch[1:, :, :3], array[0:2, 2:5, 6:9])
    patch[1, 0, 0] = 100.0
    assert array[0, 2, 6] != 100.0


def test_crop_patch_keeps_leading_channels(rng):
    array = rng.normal(size=(2, 4, 6, 6))
    assert crop_patch(array, (2, 3, 3), (2, 4, 4)).shape == (2, 2, 4, 4)


def test_context_crop_factor_one_is_the_local_patch(rng):
    array = rng.normal(size=(6, 10, 12)).astype(np.float32)
    np.testing.assert_allclose(context_crop(array, (3, 5, 6), (2, 4, 4), (1, 1, 1)), crop_patch(array, (3, 5, 6), (2, 4, 4)))


def test_context_crop_averages_blocks_around_the_same_centre():
    array = np.zeros((1, 12, 12), dtype=np.float32)
    array[0, 6:9, 6:9] = 9.0  # one 3x3 block of the factor-3 grid around centre (0, 7, 7)
    ctx = context_crop(array, (0, 7, 7), (1, 4, 4), (1, 3, 3))
    assert ctx.shape == (1, 4, 4) and ctx.dtype == np.float32
    # the crop spans 7 - 6 = 1 .. 12 along y and x; block (2, 2) covers 7..9 -> two of its rows/cols are 9
    expected = np.zeros((4, 4), np.float32)
    expected[1, 1], expected[1, 2], expected[2, 1], expected[2, 2] = 1.0, 2.0, 2.0, 4.0
    np.testing.assert_allclose(ctx[0], expected)
    assert ctx.sum() * 9 == pytest.approx(array.sum())


def _volume(shape=(12, 40, 40)):
    """Background with three classes of very different sizes (class balance must even them out)."""
    label = np.zeros(shape, np.uint8)
    label[2:10, 5:30, 5:30] = 1  # large
    label[4:8, 32:36, 32:36] = 2  # small
    label[6, 2, 38] = 3  # a single voxel
    image = label.astype(np.float32) + np.random.default_rng(0).normal(0, 0.1, shape).astype(np.float32)
    return image, label


def test_sampler_foreground_fraction_and_class_balance():
    image, label = _volume()
    sampler = PatchSampler([image], [label], (4, 8, 8), fg_fraction=1 / 3, augment=None)
    rng = np.random.default_rng(7)
    centre_classes = []
    fg_flags = []
    for _ in range(100):
        batch = sampler.batch(rng, 6)
        fg_flags.extend(batch.foreground)
        centre_classes.extend(int(lbl[2, 4, 4]) for lbl, fg in zip(batch.label, batch.foreground) if fg)
    assert np.mean(fg_flags) >= 1 / 3
    counts = np.bincount(centre_classes, minlength=4)
    assert counts[0] == 0  # every foreground patch is centred on a foreground voxel
    assert counts[1:].min() > 0.2 * sum(counts)  # the 1-voxel class is as frequent as the large one


def test_sampler_is_reproducible_with_a_seed_and_augmentation():
    image, label = _volume()
    sampler = PatchSampler([image], [label], (4, 8, 8), augment=RandomAugment(AugmentConfig(p_rotate_scale=1.0)), context_factor=(1, 3, 3))
    a = sampler.batch(np.random.default_rng(3), 4)
    b = sampler.batch(np.random.default_rng(3), 4)
    c = sampler.batch(np.random.default_rng(4), 4)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.context, b.context)
    assert a.params == b.params
    assert not np.array_equal(a.image, c.image)
    assert a.image.shape == a.context.shape == (4, 1, 4, 8, 8) and a.label.shape == (4, 4, 8, 8)


def test_identity_params_change_nothing(rng):
    image = rng.normal(size=(3, 8, 8)).astype(np.float32)
    label = rng.integers(0, 3, size=(3, 8, 8)).astype(np.uint8)
    out_image, out_label = apply_augment(image, label, AugmentParams())
    np.testing.assert_allclose(out_image, image)
    np.testing.assert_array_equal(out_label, label)


def test_rotation_keeps_label_values_and_quarter_turn_is_exact():
    label = np.zeros((1, 9, 9), np.uint8)
    label[0, 1, 4] = 2
    label[0, 2:7, 2:7] = 1
    turned = rotate_scale(label, 90.0, 1.0, nearest=True)
    assert set(np.unique(turned)) <= {0, 1, 2}
    assert (turned == 1).sum() == 25 and (turned == 2).sum() == 1
    assert turned[0, 1, 4] == 0  # the single voxel moved off the top row


def test_random_augment_reproducible_and_gamma_keeps_range(rng):
    aug = RandomAugment(AugmentConfig(p_gamma=1.0, p_noise=1.0, p_intensity=1.0))
    assert aug.sample(np.random.default_rng(1)) == aug.sample(np.random.default_rng(1))
    x = rng.normal(size=(2, 5, 5)).astype(np.float32)
    y = gamma(x, 1.4)
    assert y.min() == pytest.approx(x.min(), abs=1e-5) and y.max() == pytest.approx(x.max(), abs=1e-5)
    assert not np.allclose(y, x)
    assert RandomAugment(AugmentConfig(enabled=False)).sample(np.random.default_rng(0)) == AugmentParams()
