"""Shape guard: grid placement, scores, refinement, corruptions and checkpoints on synthetic hearts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from deconvseg.pipeline.autoencoding.fit import AutoencoderTrainConfig
from deconvseg.pipeline.autoencoding.corruption import add_hole, add_island, corrupt_labels, dilate_structure, drop_end_slice, swap_classes
from deconvseg.pipeline.autoencoding.guard import (
    ShapeGridConfig,
    crop_to_grid,
    grid_to_labels,
    largest_component_box,
    load_shape_guard,
    one_hot,
    save_shape_guard,
)
from deconvseg.pipeline.autoencoding.score import (
    PlausibilityConfig,
    confident_disagreement,
    convex_deficiency,
    enclosed_background_voxels,
    exposed_voxels,
    plausibility,
    stray_voxels,
    voxel_ml,
)
from deconvseg.pipeline.autoencoding.guard_training import (
    ShapeGuardTrainConfig,
    calibrate_plausibility,
    plausibility_study,
    refinement_study,
    roc_auc,
    train_shape_guard,
)

SHAPE = (8, 48, 48)
SPACING = (2.0, 2.0, 5.0)  # 0.02 mL voxels


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


def cx_of(labels: np.ndarray) -> int:
    """Column of the LV centre."""
    return int(round(np.argwhere(labels == 3)[:, 2].mean()))


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
    dropped = drop_end_slice(labels, rng)
    changed = np.argwhere(dropped != labels)
    assert len(np.unique(changed[:, 0])) == 1 and changed[0, 0] in (1, 6)  # the heart spans slices 1..6
    assert np.all(dropped[dropped != labels] == 0)
    grown = dilate_structure(labels, rng, 2)
    assert np.all(labels[grown != labels] == 0) and len(np.unique(grown[grown != labels])) == 1
    np.testing.assert_array_equal(labels, before)


def test_training_lowers_the_loss_and_clean_shapes_score_higher(trained):
    guard, history, held_out = trained
    assert history.epoch_loss[-1] < 0.5 * history.epoch_loss[0]
    rng = np.random.default_rng(3)
    for labels in held_out[:4]:
        clean = guard.score(labels, SPACING)
        assert clean > guard.score(swap_classes(labels, rng), SPACING)
        assert clean > guard.score(add_hole(labels, rng, 0.6), SPACING)
    study = plausibility_study(guard, held_out, SPACING, seed=1)
    assert study["auc"]["swap"] >= 0.9
    assert guard.score(np.zeros(SHAPE, dtype=np.uint8), SPACING) == 0.0
    with pytest.raises(ValueError, match="values 0..3"):
        guard.score(np.full(SHAPE, 7, dtype=np.uint8), SPACING)


def test_refine_changes_listed_classes_in_bulk_disagreement_only(trained):
    guard, _, held_out = trained
    labels = add_hole(held_out[0], np.random.default_rng(5), 0.6)
    refined = guard.refine(labels, [3])
    keep = (labels != 3) & (refined != 3)
    np.testing.assert_array_equal(refined[keep], labels[keep])
    probs = guard.probabilities(labels)
    region = confident_disagreement(labels == 3, probs[3], guard.plausibility.confidence)
    np.testing.assert_array_equal(refined[~region], labels[~region])
    assert not np.array_equal(refined, labels)  # the 0.6 hole is a bulk disagreement
    swapped = held_out[0].copy()
    swapped[held_out[0] == 1], swapped[held_out[0] == 3] = 3, 1  # RV <-> LV
    assert guard.class_scores(swapped)[1] < guard.plausibility.replace_below
    whole = guard.refine(swapped, [1])  # so the RV is replaced whole
    recon = guard.reconstruct(swapped)
    np.testing.assert_array_equal(whole == 1, recon == 1)
    np.testing.assert_array_equal(guard(labels), guard.refine(labels))
    effect = refinement_study(guard, held_out[:3], [swap_classes(m, np.random.default_rng(0)) for m in held_out[:3]])
    assert set(effect) == {1, 2, 3} and all(set(v) == {"before", "after", "gain", "keep"} for v in effect.values())


def test_checkpoint_round_trip_gives_same_reconstruction(trained, tmp_path):
    guard, _, held_out = trained
    guard.classes = (1, 3)
    guard.plausibility = PlausibilityConfig(volume_scale_ml=3.0, flag_below=0.5)
    folder = save_shape_guard(tmp_path / "guard", guard, {"n_classes": 4, "grid": [8, 16, 16], "channels": [4, 8, 8], "code_size": 16}, {"metrics": {}})
    (folder / "MODEL_CARD.md").write_text("card")
    folder = save_shape_guard(folder, guard, {"n_classes": 4, "grid": [8, 16, 16], "channels": [4, 8, 8], "code_size": 16}, {"metrics": {}})
    assert (folder / "MODEL_CARD.md").read_text() == "card"  # a re-save keeps the model card
    loaded = load_shape_guard(folder)
    assert loaded.classes == (1, 3) and loaded.config == guard.config and loaded.plausibility == guard.plausibility
    np.testing.assert_array_equal(loaded.reconstruct(held_out[1]), guard.reconstruct(held_out[1]))
    assert loaded.assess(held_out[1], SPACING) == guard.assess(held_out[1], SPACING)
    guard.classes, guard.plausibility = (), PlausibilityConfig()


def test_topology_terms_count_islands_and_enclosed_holes(rng):
    labels = synthetic_heart(rng)
    assert stray_voxels(labels == 1) == 0 and enclosed_background_voxels(labels) == 0
    island = labels.copy()
    island[2:4, 0:3, 0:3] = 3  # 18 voxels away from the heart
    assert stray_voxels(island == 3) == 18
    hole = labels.copy()
    hole[3, 22:25, 22:25] = 0  # inside the LV disc of that slice
    assert enclosed_background_voxels(hole) == 9
    assert exposed_voxels(labels, (3,)) == 0 and exposed_voxels(labels, ()) == 0  # the LV is walled by the MYO
    cut = labels.copy()
    cut[3][(labels[3] == 2) & (np.arange(SHAPE[2])[None, :] > cx_of(labels) + 2)] = 0  # wall removed on one side
    assert exposed_voxels(cut, (3,)) > 0 and exposed_voxels(cut, (1,)) == exposed_voxels(labels, (1,))
    assert voxel_ml((2.0, 2.0, 5.0)) == pytest.approx(0.02)


def test_concavity_sees_a_dent_cut_into_a_convex_outline():
    z, y, x = np.ogrid[:4, :40, :40]
    disc = np.broadcast_to(((y - 20) ** 2 + (x - 20) ** 2 <= 15**2), (4, 40, 40)).astype(np.uint8)
    assert convex_deficiency(disc).sum() < 0.05 * disc.sum()  # digitisation steps along the rim only
    dented = disc.copy()
    dented[1:3, 14:26, 28:40] = 0  # a 12 x 12 bite out of the right edge, two slices
    probs = np.stack([dented == 0, dented == 1, np.zeros_like(disc), np.zeros_like(disc)]).astype(np.float32)
    config = PlausibilityConfig(concavity_width_mm=10.0)  # a 5-voxel opening at 2 mm
    dent = plausibility(dented, probs, SPACING, config).concavity_ml
    assert dent == pytest.approx((dented[1:3] != disc[1:3]).sum() * 0.02, rel=0.2)
    assert plausibility(disc, probs, SPACING, config).concavity_ml == 0.0  # the opening removes the rim steps


def test_plausibility_terms_and_flag_from_known_probabilities(rng):
    labels = synthetic_heart(rng)
    probs = np.stack([labels == c for c in range(4)]).astype(np.float32)  # a perfect reconstruction
    config = PlausibilityConfig(
        volume_scale_ml=1.0, walled_classes=(3,), wall_weight=2.0, concavity_weight=0.0, disagreement_weight=0.5, flag_below=0.9
    )
    clean = plausibility(labels, probs, SPACING, config)
    assert clean.score == pytest.approx(1.0) and not clean.flagged
    assert clean.disagreement_ml == {1: 0.0, 2: 0.0, 3: 0.0} and clean.exposed_wall_ml == 0.0
    damaged = labels.copy()
    damaged[2:4, 0:3, 0:3] = 3  # island: 18 stray voxels = 0.36 mL
    cy, cx = np.round(np.argwhere(labels == 3)[:, 1:].mean(axis=0)).astype(int)
    damaged[2:5, cy - 2 : cy + 2, cx - 2 : cx + 2] = 0  # a 3 x 4 x 4 hole (0.96 mL) inside the LV
    terms = plausibility(damaged, probs, SPACING, config)
    assert terms.stray_ml[3] == pytest.approx(0.36) and terms.enclosed_background_ml == pytest.approx(0.96)
    assert terms.exposed_wall_ml == pytest.approx((3 * 16 + 2 * 8) * 0.02)  # the hole's rim (16 a slice), the island's (8)
    assert terms.disagreement_ml == pytest.approx({1: 0.0, 2: 0.0, 3: 0.96})  # the hole, larger than the island
    expected = np.mean(list(terms.dice.values())) * np.exp(-(0.36 + 0.96 + 2.0 * 1.28 + 0.5 * 0.96) / 1.0)
    assert terms.score == pytest.approx(expected) and terms.flagged
    band = np.zeros(SHAPE, dtype=bool)
    band[:, 10, 5:40] = True  # one voxel thick: removed by the opening
    blob = np.zeros(SHAPE, dtype=bool)
    blob[2:5, 30:34, 30:34] = True
    disagreement = confident_disagreement(band | blob, np.zeros(SHAPE, dtype=np.float32), 0.9)
    np.testing.assert_array_equal(disagreement, blob)


def test_calibration_picks_a_grid_point_with_its_training_auc(trained):
    guard, _, held_out = trained
    config, auc = calibrate_plausibility(
        guard, held_out, SPACING, seed=4, scales_ml=(0.5, 5.0), wall_weights=(0.0,), concavity_weights=(0.0,), weights=(0.0, 0.2)
    )
    assert config.volume_scale_ml in (0.5, 5.0) and config.disagreement_weight in (0.0, 0.2) and config.wall_weight == 0.0
    assert config.confidence == guard.plausibility.confidence
    assert set(auc) == {"hole", "island", "swap", "all"} and auc["swap"] >= 0.9


def test_roc_auc_values():
    assert roc_auc([0.9, 0.8], [0.1, 0.2]) == 1.0
    assert roc_auc([0.1], [0.9]) == 0.0
    assert roc_auc([0.5, 0.5], [0.5]) == 0.5
