"""Fusion rules and uncertainty on hand-made probability maps."""

from __future__ import annotations

import numpy as np
import pytest

from deconvseg.pipeline.fusion import (
    RunningFusion,
    dice_weights,
    disagreement,
    fuse,
    majority_vote,
    normalized_entropy,
    staple,
    structure_uncertainty,
    voxel_uncertainty,
    weighted_mean_fusion,
)

# Three members, three classes, four voxels (a 1x1x4 "volume").
P = np.array(
    [
        [[0.8, 0.1, 0.2, 1.0], [0.1, 0.8, 0.3, 0.0], [0.1, 0.1, 0.5, 0.0]],
        [[0.6, 0.3, 0.5, 1.0], [0.2, 0.6, 0.1, 0.0], [0.2, 0.1, 0.4, 0.0]],
        [[0.1, 0.2, 0.3, 1.0], [0.8, 0.7, 0.3, 0.0], [0.1, 0.1, 0.4, 0.0]],
    ],
    dtype=np.float32,
).reshape(3, 3, 1, 1, 4)


def test_mean_fusion():
    fused = fuse(P, "mean")
    np.testing.assert_allclose(fused[:, 0, 0, 0], [0.5, 1.1 / 3, 0.4 / 3], rtol=1e-6)
    np.testing.assert_allclose(fused.sum(axis=0), 1.0, rtol=1e-6)


def test_weighted_mean_with_per_class_weights():
    weights = np.array([[1.0, 1.0, 1.0], [1.0, 1.0, 1.0], [0.0, 0.0, 0.0]])  # member 3 switched off
    fused = weighted_mean_fusion(P, weights)
    np.testing.assert_allclose(fused, P[:2].mean(axis=0), rtol=1e-6)
    # Class 1 trusted only from member 3: voxel 0 becomes class 1 after renormalisation.
    weights = np.array([[1.0, 0.0, 1.0], [1.0, 0.0, 1.0], [1.0, 1.0, 1.0]])
    fused = fuse(P, "weighted_mean", weights)
    raw = np.array([(0.8 + 0.6 + 0.1) / 3, 0.8, (0.1 + 0.2 + 0.1) / 3])
    np.testing.assert_allclose(fused[:, 0, 0, 0], raw / raw.sum(), rtol=1e-5)
    assert fused[:, 0, 0, 0].argmax() == 1
    with pytest.raises(ValueError, match="non-negative"):
        weighted_mean_fusion(P, np.array([1.0, -1.0, 1.0]))
    with pytest.raises(ValueError, match="needs weights"):
        fuse(P, "weighted_mean")


def test_dice_weights_from_model_metrics():
    metrics = [
        {"val_dice": {"liver": 0.9, "spleen": 0.5}, "mean_dice": 0.7},
        {"val_dice": {"liver": 0.6}, "mean_dice": 0.6},
        {},
    ]
    np.testing.assert_allclose(
        dice_weights(metrics, ["liver", "spleen"]), [[0.7, 0.9, 0.5], [0.6, 0.6, 0.6], [1.0, 1.0, 1.0]]
    )


def test_majority_vote():
    labels = P.argmax(axis=1)  # member labels per voxel: [0,1,2,0], [0,1,0,0], [1,1,2,0]
    votes = majority_vote(labels, 3)
    np.testing.assert_allclose(votes[:, 0, 0], [[2 / 3, 0, 1 / 3, 1], [1 / 3, 1, 0, 0], [0, 0, 2 / 3, 0]], rtol=1e-6)
    np.testing.assert_array_equal(fuse(P, "majority").argmax(0)[0, 0], [0, 1, 2, 0])


def test_staple_on_three_raters(rng):
    truth = np.zeros((6, 8, 8), np.uint8)
    truth[1:5, 2:6, 2:6] = 1
    truth[2:4, 3:5, 3:5] = 2
    good = truth.copy()
    noisy = truth.copy()
    noisy[rng.random(truth.shape) < 0.1] = 0  # misses 10 % of the structure voxels
    bad = np.where(rng.random(truth.shape) < 0.4, rng.integers(0, 3, truth.shape), truth).astype(np.uint8)
    posterior = staple(np.stack([good, noisy, bad]), 3)
    assert posterior.shape == (3, *truth.shape)
    np.testing.assert_allclose(posterior.sum(axis=0), 1.0, rtol=1e-5)
    raters_right = (good == truth).astype(int) + (noisy == truth) + (bad == truth)
    np.testing.assert_array_equal(posterior.argmax(axis=0)[raters_right >= 2], truth[raters_right >= 2])
    # Where the two reliable raters outvote the unreliable one, STAPLE is confident.
    differ = (bad != truth) & (noisy == truth)
    assert differ.any() and posterior.max(axis=0)[differ].min() > 0.9
    # The unreliable rater earns less trust: where only it disagrees, its vote moves the
    # posterior less than the noisy rater's does where only that one disagrees.
    only_bad = (bad != truth) & (noisy == truth)
    only_noisy = (noisy != truth) & (bad == truth)
    assert only_noisy.any()
    p_true = np.take_along_axis(posterior, truth[None].astype(np.int64), 0)[0]
    assert p_true[only_bad].mean() > p_true[only_noisy].mean()


def test_uncertainty_is_zero_where_members_agree_with_certainty():
    certain = np.zeros((3, 3, 2, 2, 2), np.float32)
    certain[:, 1] = 1.0
    certain[:, :, 0, 0, 0] = 0.0
    certain[0, 0, 0, 0, 0] = 1.0  # one voxel where member 1 says background, the others class 2
    certain[1:, 2, 0, 0, 0] = 1.0
    fused = fuse(certain, "mean")
    fused_labels = fused.argmax(0)
    member_labels = certain.argmax(1)
    u = voxel_uncertainty(fused, member_labels, fused_labels)
    assert u.dtype == np.float32 and u.min() >= 0 and u.max() <= 1
    agree = np.ones((2, 2, 2), bool)
    agree[0, 0, 0] = False
    assert np.all(u[agree] == 0.0)
    assert u[0, 0, 0] > 0.5
    assert disagreement(member_labels, fused_labels)[0, 0, 0] == pytest.approx(1 / 3)
    assert normalized_entropy(np.full((4, 1), 0.25, np.float32))[0] == pytest.approx(1.0)


def test_structure_uncertainty_is_high_where_members_place_a_structure_differently():
    member_labels = np.zeros((3, 1, 1, 6), np.uint8)
    member_labels[:, 0, 0, :2] = 1  # class 1: every member agrees
    member_labels[0, 0, 0, 3] = 2  # class 2: one member only
    fused_labels = np.array([[[1, 1, 0, 0, 0, 0]]], np.uint8)
    u = np.array([[[0.0, 0.1, 0.0, 0.6, 0.0, 0.0]]], np.float32)
    scores = structure_uncertainty(u, member_labels, fused_labels, 4)
    assert scores == {1: pytest.approx(0.05), 2: pytest.approx(0.6)}


@pytest.mark.parametrize("rule", ["mean", "weighted_mean", "majority", "staple"])
def test_running_fusion_member_by_member_equals_fusing_the_stack(rule):
    rng = np.random.default_rng(0)
    stack = rng.dirichlet(np.ones(3), size=(4, 5, 6, 7)).astype(np.float32).transpose(0, 4, 1, 2, 3)  # (M, C, ...)
    box = (slice(1, 4), slice(0, 6), slice(2, 7))
    stack[:, :, :1] = stack[:, :, 4:] = stack[:, :, :, :, :2] = 0.0  # members 1-3: background outside the box
    stack[1:, 0, :1] = stack[1:, 0, 4:] = stack[1:, 0, :, :, :2] = 1.0
    stack[0] = rng.dirichlet(np.ones(3), size=(5, 6, 7)).astype(np.float32).transpose(3, 0, 1, 2)  # member 0: whole map
    weights = rng.uniform(0.5, 1.0, size=(4, 3)).astype(np.float32)
    running = RunningFusion(rule, weights, 4, 3, (5, 6, 7))
    running.add(0, stack[0])
    for m in (3, 1, 2):  # any order
        running.add(m, stack[(m, slice(None), *box)], box)
    np.testing.assert_allclose(running.result(), fuse(stack, rule, weights), atol=1e-6)
    np.testing.assert_array_equal(running.labels, stack.argmax(axis=1))


def test_voxel_uncertainty_is_the_same_in_slabs():
    rng = np.random.default_rng(1)
    fused = rng.dirichlet(np.ones(4), size=(9, 5, 3)).astype(np.float32).transpose(3, 0, 1, 2)
    members = rng.integers(0, 4, size=(3, 9, 5, 3)).astype(np.uint8)
    labels = fused.argmax(axis=0).astype(np.uint8)
    whole = voxel_uncertainty(fused, members, labels, slab=100)
    np.testing.assert_array_equal(voxel_uncertainty(fused, members, labels, slab=2), whole)
    assert whole.max() > 0.5
