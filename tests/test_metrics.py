"""Metrics on hand-made masks with anisotropic spacing, checked against hand counts and brute force."""

from __future__ import annotations

import math

import numpy as np
import pytest

from deconvseg.pipeline.labels import ACDC
from deconvseg.pipeline.metrics import (
    aggregate,
    dice,
    hd95,
    label_metrics,
    surface_dice,
    surface_distances,
    volume_error_ml,
)

SPACING = (0.5, 1.0, 3.0)  # x, y, z in mm: the array is [z, y, x]


def _box(shape=(7, 12, 14), z=(2, 5), y=(3, 8), x=(3, 8)) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[z[0] : z[1], y[0] : y[1], x[0] : x[1]] = True
    return mask


def test_shifted_box_by_hand() -> None:
    ref = _box()
    along_x = _box(x=(4, 9))
    along_z = _box(z=(3, 6))
    # 3x5x5 box: 75 voxels, 9 interior, 66 on the surface. Shifted one voxel along x, 18 surface voxels
    # of each box are 0.5 mm from the other's surface: the 15 of the face beyond the other box and the
    # 3 of the face inside it that sit over the other's 1x3x3 interior; the other 48 lie on it (0 mm).
    assert dice(along_x, ref) == pytest.approx(2 * 60 / 150)
    assert hd95(along_x, ref, SPACING) == pytest.approx(0.5)  # one voxel along x = 0.5 mm
    assert hd95(along_z, ref, SPACING) == pytest.approx(3.0)  # one voxel along z = 3 mm
    d_pr, d_rp = surface_distances(along_x, ref, SPACING)
    assert d_pr.size == d_rp.size == 66
    assert sorted(set(np.round(d_pr, 6))) == [0.0, 0.5] and np.sum(d_pr > 0) == 18
    assert surface_dice(along_x, ref, SPACING, tolerance_mm=0.4) == pytest.approx(96 / 132)
    assert surface_dice(along_x, ref, SPACING, tolerance_mm=0.5) == 1.0


def test_volume_error_uses_spacing() -> None:
    ref, bigger = _box(), _box(x=(3, 10))  # 75 vs 105 voxels of 1.5 mm^3
    assert volume_error_ml(bigger, ref, SPACING) == pytest.approx(30 * 1.5 / 1000)
    assert volume_error_ml(ref, bigger, SPACING) == pytest.approx(-30 * 1.5 / 1000)


def test_masks_touching_the_array_border() -> None:
    ref = _box(z=(0, 7), y=(0, 12), x=(0, 14))  # the whole array: every border voxel is surface
    assert hd95(ref, ref, SPACING) == 0.0
    d_pr, _ = surface_distances(ref, ref, SPACING)
    assert d_pr.size == 7 * 12 * 14 - 5 * 10 * 12


def _brute_force(pred: np.ndarray, ref: np.ndarray, spacing) -> tuple[np.ndarray, np.ndarray]:
    def surface(mask: np.ndarray) -> np.ndarray:
        padded = np.pad(mask, 1)
        inner = np.ones_like(mask)
        for axis in range(3):
            for step in (-1, 1):
                inner &= np.roll(padded, step, axis)[1:-1, 1:-1, 1:-1]
        return np.argwhere(mask & ~inner) * np.array(spacing[::-1])

    sp, sr = surface(pred), surface(ref)
    dist = np.linalg.norm(sp[:, None, :] - sr[None, :, :], axis=-1)
    return dist.min(axis=1), dist.min(axis=0)


def test_distances_match_brute_force_on_random_blobs(rng: np.random.Generator) -> None:
    for _ in range(3):
        pred = rng.random((6, 11, 13)) < 0.3
        ref = rng.random((6, 11, 13)) < 0.3
        pred[:, :, :4] = False  # different bounding boxes for the two masks
        ours = surface_distances(pred, ref, SPACING)
        brute = _brute_force(pred, ref, SPACING)
        for a, b in zip(ours, brute):
            np.testing.assert_allclose(np.sort(a), np.sort(b), atol=1e-9)
        expected = max(np.percentile(brute[0], 95), np.percentile(brute[1], 95))
        assert hd95(pred, ref, SPACING) == pytest.approx(expected)


def test_empty_masks_follow_the_stated_policy() -> None:
    empty, box = np.zeros((5, 6, 7), bool), _box((5, 6, 7), (1, 3), (1, 4), (2, 5))
    assert dice(empty, empty) == 1.0 and surface_dice(empty, empty, SPACING, 1.0) == 1.0
    assert math.isnan(hd95(empty, empty, SPACING))
    assert dice(box, empty) == 0.0 and surface_dice(empty, box, SPACING, 1.0) == 0.0
    assert hd95(box, empty, SPACING) == math.inf and hd95(empty, box, SPACING) == math.inf
    with pytest.raises(ValueError, match="non-empty"):
        surface_distances(box, empty, SPACING)
    with pytest.raises(ValueError, match="one shape"):
        hd95(box, box[:, :, :-1], SPACING)


def test_label_metrics_and_aggregate() -> None:
    ref = np.zeros((7, 12, 14), np.uint8)
    ref[_box()] = 3
    ref[0, 0:2, 0:2] = 1
    pred = np.zeros_like(ref)
    pred[_box(x=(4, 9))] = 3  # right ventricle missing in the prediction; myocardium absent in both
    case = label_metrics(pred, ref, ACDC, SPACING, tolerance_mm=0.4)
    assert case["dice"] == {"right_ventricle": 0.0, "myocardium": 1.0, "left_ventricle": pytest.approx(0.8)}
    assert case["hd95"]["right_ventricle"] == math.inf and math.isnan(case["hd95"]["myocardium"])
    assert case["hd95"]["left_ventricle"] == pytest.approx(0.5)
    assert case["surface_dice"]["left_ventricle"] == pytest.approx(96 / 132)
    assert case["volume_ref_ml"]["left_ventricle"] == pytest.approx(75 * 1.5 / 1000)
    assert case["mean_dice"] == pytest.approx((0.0 + 1.0 + 0.8) / 3)

    perfect = label_metrics(ref, ref, ACDC, SPACING)
    summary = aggregate([case, perfect])
    assert summary["cases"] == 2
    assert summary["dice"]["left_ventricle"] == pytest.approx(0.9)
    assert summary["hd95"]["left_ventricle"] == pytest.approx(0.25)
    assert summary["hd95"]["right_ventricle"] == 0.0 and summary["hd95_missing"]["right_ventricle"] == 1
    assert summary["hd95"]["myocardium"] is None
    with pytest.raises(ValueError, match="differs"):
        label_metrics(pred, ref[:-1], ACDC, SPACING)
