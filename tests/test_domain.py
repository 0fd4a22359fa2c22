"""The training-domain record and its checks: each check tripped by an input made for it, passed by one that fits."""

from __future__ import annotations

import json

import numpy as np
import pytest

from deconvseg.pipeline.domain import (
    CaseFlag,
    DomainMismatchError,
    TrainingDomain,
    calibrate,
    check_applicability,
    fit_domain,
    input_flags,
    intensity_features,
    output_flags,
    structure_flags,
)
from deconvseg.pipeline.export.stats import compute_stats
from deconvseg.pipeline.phantoms import PHANTOM_LABELS, make_phantom
from deconvseg.pipeline.volume import Volume

SHAPE, SPACING = (24, 48, 48), (4.0, 4.0, 6.0)
NAMES = {label.value: label.name for label in PHANTOM_LABELS}


def _phantom(modality: str = "CT", seed: int = 0) -> tuple[Volume, Volume]:
    return make_phantom(modality, shape=SHAPE, spacing=SPACING, seed=seed)


def _domain(modality: str = "CT", seeds: range = range(4)) -> TrainingDomain:
    pairs = [_phantom(modality, seed) for seed in seeds]
    return fit_domain([p[0] for p in pairs], [p[1] for p in pairs], NAMES, modality=modality,  # type: ignore[arg-type]
                      task="phantom organs", body_region="abdomen", dataset="phantoms", spacing=(4.0, 4.0, 4.0))


@pytest.fixture(scope="module")
def ct_domain() -> TrainingDomain:
    return _domain("CT")


def test_record_round_trips_through_json_and_holds_the_training_figures(ct_domain):
    again = TrainingDomain.model_validate(json.loads(ct_domain.model_dump_json()))
    assert again == ct_domain
    assert ct_domain.cases == 4 and ct_domain.modality == "CT"
    assert ct_domain.spacing_range[2].low == ct_domain.spacing_range[2].high == 6.0
    assert all(s.presence == 1.0 for s in ct_domain.structures.values())
    liver = ct_domain.structures["liver"].volume_ml
    assert 0 < liver.low <= liver.high
    assert ct_domain.intensity["hu_p50"].low < ct_domain.intensity["hu_p99"].high


def test_mr_fingerprint_is_invariant_to_scanner_scaling():
    image, _ = _phantom("MR")
    scaled = image.with_array(image.array * 7.5 + 30.0)
    a, b = intensity_features(image, "MR"), intensity_features(scaled, "MR")
    assert a.keys() == b.keys()
    for key in a:
        assert a[key] == pytest.approx(b[key], abs=1e-3), key


def test_modality_mismatch_is_refused_with_the_word_modality(ct_domain):
    mr, _ = _phantom("MR")
    with pytest.raises(DomainMismatchError, match="modality MR but model 'demo' was trained on CT") as err:
        check_applicability(mr, ct_domain, "demo")
    assert "--allow-domain-mismatch" in str(err.value)


def test_modality_mismatch_allowed_becomes_a_flag(ct_domain):
    mr, _ = _phantom("MR")
    flags = check_applicability(mr, ct_domain, "demo", allow_mismatch=True)
    assert [f.flag for f in flags] == ["domain_mismatch"] and "modality" in flags[0].reason


def test_channel_mismatch_is_refused(ct_domain):
    ct, _ = _phantom("CT")
    with pytest.raises(DomainMismatchError, match="2 channel"):
        check_applicability(ct, ct_domain, "demo", channels=2)


def test_matching_input_is_accepted(ct_domain):
    ct, _ = _phantom("CT", seed=9)
    assert check_applicability(ct, ct_domain, "demo") == []


def test_explicit_modality_overrides_detection(ct_domain):
    ct, _ = _phantom("CT")
    with pytest.raises(DomainMismatchError, match="modality"):
        check_applicability(ct, ct_domain, "demo", modality="MR")


def test_fresh_phantom_is_in_distribution(ct_domain):
    ct, _ = _phantom("CT", seed=42)
    assert input_flags(ct, ct_domain) == []


def test_fatty_body_is_out_of_distribution_with_figures(ct_domain):
    ct, label = _phantom("CT", seed=42)
    array = ct.array.astype(np.int16).copy()
    array[(label.array == 0) & (array > -500)] = -100  # a body of fat: real CT's muscle and fat mix
    flags = input_flags(ct.with_array(array), ct_domain)
    assert [f.flag for f in flags] == ["out_of_distribution"]
    assert "hu_p50" in flags[0].reason and "training" in flags[0].reason


def test_thin_slices_are_out_of_distribution(ct_domain):
    ct, _ = _phantom("CT", seed=42)
    thin = Volume(ct.array, spacing=(4.0, 4.0, 1.0), kind="image", metadata=dict(ct.metadata))
    flags = input_flags(thin, ct_domain)
    assert len(flags) == 1 and "z spacing 1 mm" in flags[0].reason


def _rows(image: Volume, label: Volume, uncertainty: float = 0.05) -> list[dict]:
    return compute_stats(image, label, PHANTOM_LABELS, image.with_array(np.full(image.shape, uncertainty, np.float32)))


def test_volume_within_training_range_passes_and_double_volume_trips(ct_domain):
    ct, label = _phantom("CT", seed=2)
    assert output_flags(_rows(ct, label), ct_domain) == []
    big = ct_domain.structures["liver"].volume_ml.high * 2
    row = {"name": "liver", "voxels": 10, "volume_ml": big, "touches_border": False, "mean_uncertainty": None}
    assert [f for f, _ in structure_flags(row, ct_domain)] == ["implausible_volume"]


def test_small_structure_cut_by_the_border_is_not_implausible(ct_domain):
    row = {"name": "liver", "voxels": 10, "volume_ml": 1.0, "touches_border": True, "mean_uncertainty": None}
    assert structure_flags(row, ct_domain) == []
    assert [f for f, _ in structure_flags({**row, "touches_border": False}, ct_domain)] == ["implausible_volume"]


def test_empty_structure_always_present_in_training_is_missing(ct_domain):
    ct, label = _phantom("CT", seed=2)
    no_spleen = label.with_array(np.where(label.array == 2, 0, label.array).astype(np.uint8))
    rows = _rows(ct, no_spleen)
    flags = output_flags(rows, ct_domain)
    assert [f.flag for f in flags] == ["missing_structure"]
    assert flags[0].reason == "spleen empty (in 100% of training labels)"
    assert {r["name"]: r["flags"] for r in rows}["spleen"] == ["missing_structure"]


def test_empty_structure_rare_in_training_is_not_missing(ct_domain):
    rare = ct_domain.model_copy(update={"structures": {
        **ct_domain.structures, "spleen": ct_domain.structures["spleen"].model_copy(update={"presence": 0.6})}})
    row = {"name": "spleen", "voxels": 0, "volume_ml": 0.0, "touches_border": False, "mean_uncertainty": None}
    assert structure_flags(row, rare) == []


def test_calibrated_high_uncertainty_marks_the_unusual_only(ct_domain):
    rng = np.random.default_rng(0)
    uncertainties = rng.uniform(0.2, 0.4, size=20)  # above the generic 0.25 for most cases
    rows = [[{"name": name, "voxels": 5, "volume_ml": 1.0, "mean_uncertainty": float(u)} for name in NAMES.values()]
            for u in uncertainties]
    dice = [{name: float(1.0 - u) for name in NAMES.values()} for u in uncertainties]
    calibrated = calibrate(ct_domain, rows, dice, case_flags=[[] for _ in rows])
    liver = calibrated.structures["liver"].calibration
    assert liver is not None and liver.flag_rate <= 0.1 and liver.dice_flagged < liver.dice_unflagged
    assert calibrated.flag_rates["any"] == 0.0 and calibrated.val_cases == 20
    ct, label = _phantom("CT", seed=2)
    usual = _rows(ct, label, uncertainty=float(np.median(uncertainties)))
    assert "high_uncertainty" in {f for r in usual for f in r["flags"]}  # the generic 0.25 fires on the usual
    output_flags(usual, calibrated)
    assert not any(r["flags"] for r in usual)
    unusual = _rows(ct, label, uncertainty=0.45)
    assert output_flags(unusual, calibrated) == []  # a structure flag, not a case flag
    assert all(r["flags"] == ["high_uncertainty"] for r in unusual)


def test_case_flag_serialises_as_flag_and_reason():
    flag = CaseFlag(flag="out_of_distribution", reason="x")
    assert flag.model_dump() == {"flag": "out_of_distribution", "reason": "x"}
