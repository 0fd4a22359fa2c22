"""Shape guard: grid placement, scores, refinement, corruptions and checkpoints on synthetic hearts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.autoencoding import AutoencoderTrainConfig
from pipeline.label_corruption import add_hole, add_island, corrupt_labels, swap_classes
from pipeline.shape_guard import (
    ShapeGridConfig,
    crop_to_grid,
    grid_to_labels,
    largest_component_box,
    load_shape_guard,
    one_hot,
    save_shape_guard,
)
from pipeline.shape_guard_training import ShapeGuardTrainConfig, plausibility_study, refinement_study, roc_auc, train_shape_guard

SHAPE = (8, 48, 48)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One torch thread: the suite shares two cores with other work."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def synthetic_heart(rng: np.random.Generator) -> np.ndarray:
    """LV (3) disc inside a MYO (2) ring, RV (1) crescent on its left; radii and centre vary."""
    z, y, x = np.ogrid[: SHAPE[0], : SHAPE[1], : SHAPE[2]]
    cy, cx = rng.uniform(20, 28, size=2)
    r = rng.uniform(6, 8) * (1.0 - 0.04 * np.abs(z - 3.5))
    dist = np.sqrt((y - cy) ** 2 + (x - cx) ** 2)
    labels = np.zeros(SHAPE, dtype=np.uint8)
    rv = np.sqrt((y - cy) ** 2 + (x - cx + 1.6 * r) ** 2) < 1.2 * r
    labels[np.broadcast_to(rv, SHAPE) & (z >= 1) & (z <= 6)] = 1
    labels[np.broadcast_to(dist < r + 3, SHAPE) & (z >= 1) & (z <= 6)] = 2
    labels[np.broadcast_to(dist < r, SHAPE) & (z >= 1) & (z <= 6)] = 3
    return labels


@pytest.fixture(scope="module")
def trained():
    rng = np.random.default_rng(7)
    maps = [synthetic_heart(rng) for _ in range(48)]
    config = ShapeGuardTrainConfig(
        grid=ShapeGridConfig(grid=(8, 16, 16), z_margin=0),
        channels=(4, 8, 8),
        code_size=16,
        copies=1,
        train=AutoencoderTrainConfig(epochs=20, batch_size=4, lr=1e-2, seed=0),
    )
    guard, history = train_shape_guard(maps, config)
    return guard, history, [synthetic_heart(rng) for _ in range(8)]


def test_box_ignores_islands_and_grid_round_trip_is_exact(rng):
    labels = synthetic_heart(rng)
    config = ShapeGridConfig(grid=(8, 32, 32), margin=0.0, z_margin=0)
    with_island = labels.copy()
    with_island[0, 0:2, 0:2] = 1
    assert largest_component_box(with_island, config) == largest_component_box(labels, config)
    box = ((0, 8), (8, 40), (8, 40))  # grid-sized box: resampling is the identity
    grid = crop_to_grid(labels, box, (8, 32, 32))
    np.testing.assert_array_equal(grid, labels[:, 8:40, 8:40])
    back = grid_to_labels(one_hot(grid[None], 4)[0] * 10, box, labels.shape)
    np.testing.assert_array_equal(back[:, 8:40, 8:40], grid)
    outside = ((-4, 4), (-16, 16), (40, 72))  # partly outside the array: background there
    assert crop_to_grid(labels, outside, (8, 32, 32))[:4].max() == 0


def test_corruptions_change_a_copy_only(rng):
    labels = synthetic_heart(rng)
    before = labels.copy()
    hole, island, swapped = add_hole(labels, rng), add_island(labels, rng), swap_classes(labels, rng)
    np.testing.assert_array_equal(labels, before)
    assert (hole == 0).sum() > (labels == 0).sum()
    assert (island > 0).sum() > (labels > 0).sum()
    assert sorted(np.bincount(swapped.ravel(), minlength=4)) == sorted(np.bincount(labels.ravel(), minlength=4))
    assert not np.array_equal(swapped, labels)
    with pytest.raises(ValueError, match="unknown corruption"):
        corrupt_labels(labels, "blur", rng)


def test_training_lowers_the_loss_and_clean_shapes_score_higher(trained):
    guard, history, held_out = trained
    assert history.epoch_loss[-1] < 0.5 * history.epoch_loss[0]
    rng = np.random.default_rng(3)
    for labels in held_out[:4]:
        clean = guard.score(labels)
        assert clean > guard.score(swap_classes(labels, rng))
        assert clean > guard.score(add_hole(labels, rng, 0.6))
    study = plausibility_study(guard, held_out, seed=1)
    assert study["auc"]["swap"] >= 0.9
    assert guard.score(np.zeros(SHAPE, dtype=np.uint8)) == 0.0
    with pytest.raises(ValueError, match="values 0..3"):
        guard.score(np.full(SHAPE, 7, dtype=np.uint8))


def test_refine_touches_listed_classes_only_and_hook_refines_all_by_default(trained):
    guard, _, held_out = trained
    labels = add_hole(held_out[0], np.random.default_rng(5), 0.6)
    refined = guard.refine(labels, [3])
    keep = (labels != 3) & (refined != 3)
    np.testing.assert_array_equal(refined[keep], labels[keep])
    np.testing.assert_array_equal(guard(labels), guard.reconstruct(labels))
    effect = refinement_study(guard, held_out[:3], [swap_classes(m, np.random.default_rng(0)) for m in held_out[:3]])
    assert set(effect) == {1, 2, 3} and all(set(v) == {"before", "after", "gain", "keep"} for v in effect.values())


def test_checkpoint_round_trip_gives_same_reconstruction(trained, tmp_path):
    guard, _, held_out = trained
    guard.classes = (1, 3)
    folder = save_shape_guard(tmp_path / "guard", guard, {"n_classes": 4, "grid": [8, 16, 16], "channels": [4, 8, 8], "code_size": 16}, {"metrics": {}})
    loaded = load_shape_guard(folder)
    assert loaded.classes == (1, 3) and loaded.config == guard.config
    np.testing.assert_array_equal(loaded.reconstruct(held_out[1]), guard.reconstruct(held_out[1]))
    guard.classes = ()


def test_roc_auc_values():
    assert roc_auc([0.9, 0.8], [0.1, 0.2]) == 1.0
    assert roc_auc([0.1], [0.9]) == 0.0
    assert roc_auc([0.5, 0.5], [0.5]) == 0.5
