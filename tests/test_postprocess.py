"""Refinement steps on hand-drawn blobs (thresholds in mL, anisotropic spacing) and step selection."""

from __future__ import annotations

import json

import numpy as np
import pytest

from deconvseg.pipeline.postprocess import Step, apply_plan, apply_step, choose_steps, dice_per_class

ANISO = (1.0, 1.0, 4.0)  # x, y, z mm: one voxel = 4 mm^3


def _two_blobs() -> np.ndarray:
    labels = np.zeros((10, 20, 20), np.uint8)
    labels[2:8, 2:10, 2:10] = 1  # 384 voxels
    labels[2:4, 14:17, 14:17] = 1  # 18 voxels = 72 mm^3 at ANISO
    labels[5:9, 14:18, 14:18] = 2
    return labels


def test_largest_component_keeps_only_the_main_blob():
    labels = _two_blobs()
    out = apply_step(labels, Step(step="largest_component", label=1), ANISO)
    assert (out == 1).sum() == 384 and (out[2:4, 14:17, 14:17] == 0).all()
    np.testing.assert_array_equal(out == 2, labels == 2)  # other classes untouched
    assert (labels == 1).sum() == 402  # input not modified


@pytest.mark.parametrize("min_ml,removed", [(0.071, False), (0.073, True)])
def test_island_threshold_in_ml_uses_the_anisotropic_spacing(min_ml, removed):
    # The island has 18 voxels: 0.072 mL at 1x1x4 mm, but only 0.018 mL at 1 mm isotropic.
    out = apply_step(_two_blobs(), Step(step="remove_islands", label=1, params={"min_ml": min_ml}), ANISO)
    assert (out[2:4, 14:17, 14:17] == 0).all() == removed
    assert (out[2:8, 2:10, 2:10] == 1).all()
    iso = apply_step(_two_blobs(), Step(step="remove_islands", label=1, params={"min_ml": 0.02}), (1.0, 1.0, 1.0))
    assert (iso[2:4, 14:17, 14:17] == 0).all()


def test_fill_holes_fills_background_but_never_another_structure():
    labels = np.zeros((9, 9, 9), np.uint8)
    labels[1:8, 1:8, 1:8] = 2
    labels[3:6, 3:6, 3:6] = 0  # an empty cavity ...
    labels[4, 4, 4] = 3  # ... around another structure
    out = apply_step(labels, Step(step="fill_holes", label=2), ANISO)
    assert (out == 0).sum() == (labels == 0).sum() - 26
    assert out[4, 4, 4] == 3


def test_smooth_removes_a_one_voxel_spike_in_mm():
    labels = np.zeros((12, 24, 24), np.uint8)
    labels[3:9, 6:18, 6:18] = 1
    labels[6, 12, 18] = 1  # a spike sticking out in x
    out = apply_step(labels, Step(step="smooth", label=1, params={"sigma_mm": 1.0}), ANISO)
    assert out[6, 12, 18] == 0 and out[6, 12, 12] == 1
    assert abs(int((out == 1).sum()) - int((labels == 1).sum())) < 0.1 * (labels == 1).sum()


def test_enclosed_by_drops_cavity_voxels_outside_the_ring():
    labels = np.zeros((4, 20, 20), np.uint8)
    labels[:, 4:14, 4:14] = 2  # myocardium ring ...
    labels[:, 6:12, 6:12] = 3  # ... around the LV cavity
    labels[:, 16:19, 16:19] = 3  # a stray LV blob outside
    out = apply_step(labels, Step(step="enclosed_by", label=3, params={"outer": 2, "axis": 0}), ANISO)
    assert (out[:, 6:12, 6:12] == 3).all() and (out[:, 16:19, 16:19] == 0).all()


def test_prior_hook_takes_a_callable_by_name():
    labels = _two_blobs()

    def box_prior(lab: np.ndarray) -> np.ndarray:
        out = np.zeros_like(lab)
        out[2:8, 2:10, 2:10] = 1
        out[1, 2:10, 2:10] = 1  # the prior grows the organ by one slice
        return out

    step = Step(step="prior", label=1, params={"name": "box"})
    out = apply_step(labels, step, ANISO, {"box": box_prior})
    assert (out == 1).sum() == 384 + 64
    with pytest.raises(KeyError, match="box"):
        apply_step(labels, step, ANISO)


def test_choose_steps_keeps_helpful_steps_and_switches_off_a_harmful_one():
    # Class 1 truly is one blob (islands are errors); class 2 truly has two parts.
    references, predictions = [], []
    for shift in (0, 1, 2):
        ref = np.zeros((10, 24, 24), np.uint8)
        ref[2:8, 2 + shift : 10 + shift, 2:10] = 1
        ref[1:4, 14:20, 14:20] = 2
        ref[6:9, 14:20, 2:6] = 2
        pred = ref.copy()
        pred[8, 20 - shift, 20] = 1  # a false island of class 1
        predictions.append(pred)
        references.append(ref)
    candidates = [{"step": "largest_component"}, {"step": "remove_islands", "params": {"min_ml": 0.01}}]
    plan = choose_steps(predictions, references, ANISO, candidates)
    kept = {(s["step"], s["label"]) for s in plan["steps"]}
    assert ("largest_component", 1) in kept
    assert ("largest_component", 2) not in kept
    assert any(r["step"] == "largest_component" and r["label"] == 2 and r["dice_after"] < r["dice_before"]
               for r in plan["rejected"])
    json.dumps(plan)  # storable in model.json
    refined = [apply_plan(p, plan, ANISO) for p in predictions]
    after = dice_per_class(refined, references, [1, 2])
    before = dice_per_class(predictions, references, [1, 2])
    assert after[1] > before[1] and after[2] == before[2] == 1.0


def test_apply_plan_without_a_plan_is_an_unchanged_copy():
    labels = _two_blobs()
    out = apply_plan(labels, None, ANISO)
    assert out is not labels
    np.testing.assert_array_equal(out, labels)
