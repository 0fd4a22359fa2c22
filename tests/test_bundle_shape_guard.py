"""The ACDC shape guard as a QA flag of the review bundle (``qa.json``, ``implausible_shape``) and of ``segment_case``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from deconvseg.pipeline.io.datasets import read_acdc
from deconvseg.pipeline.ensemble import Ensemble
from deconvseg.pipeline.errors import ConfigError
from deconvseg.pipeline.export.bundle import write_bundle
from deconvseg.pipeline.autoencoding.assessment import ShapeAssessment
from deconvseg.pipeline.autoencoding.corruption import add_hole, add_island, swap_classes
from deconvseg.pipeline.labels import ACDC, Label, LabelTable
from deconvseg.pipeline.segment import InferenceConfig, segment_case
from deconvseg.pipeline.autoencoding.guard import load_shape_guard
from deconvseg.pipeline.volume import Volume
from tests.conftest import shared_path

GUARD = Path(__file__).resolve().parents[1] / "models" / "weights" / "shape-ae-acdc"


@pytest.fixture(scope="module")
def acdc_case():
    torch.set_num_threads(1)
    root = shared_path("acdc")
    (case,) = read_acdc(root, ["patient028_frame01"])  # val.list
    return case, load_shape_guard(GUARD)


def _bundle(tmp_path: Path, name: str, case, guard, labels: np.ndarray) -> tuple[dict, list[dict], str]:
    shape = ShapeAssessment(guard.assess(labels, case.label.spacing), guard.plausibility, GUARD.name)
    write_bundle(tmp_path / name, case.image, case.label.with_array(labels, kind="label"), ACDC, shape=shape)
    out = tmp_path / name
    qa = json.loads((out / "qa.json").read_text())["shape"]
    return qa, json.loads((out / "stats.json").read_text()), (out / "report.html").read_text()


def test_reference_labels_pass_and_an_island_is_flagged_on_its_structure(tmp_path, acdc_case):
    case, guard = acdc_case
    qa, stats, report = _bundle(tmp_path, "reference", case, guard, case.label.array)
    assert qa["guard"] == "shape-ae-acdc" and qa["threshold"] == pytest.approx(guard.plausibility.flag_below)
    assert qa["score"] > qa["threshold"] and not qa["flagged"] and qa["blamed"] == []
    assert set(qa["terms"]["dice"]) == {"right_ventricle", "myocardium", "left_ventricle"}
    assert all("implausible_shape" not in row["flags"] for row in stats)
    assert "id='shape'>score" in report and "implausible_shape" not in report

    island = add_island(case.label.array, np.random.default_rng(1))  # a myocardium blob in the background
    (value,) = set(np.unique(island[island != case.label.array]).tolist())
    qa, stats, report = _bundle(tmp_path, "island", case, guard, island)
    name = ACDC.names[ACDC.values.index(value)]
    assert qa["flagged"] and qa["score"] < qa["threshold"] and qa["blamed"] == [name]
    assert qa["terms"]["stray_ml"][name] > 5.0
    flagged = {row["name"] for row in stats if "implausible_shape" in row["flags"]}
    assert flagged == {name}
    assert "implausible_shape" in report and f"blamed: {name}" in report


def test_a_small_hole_flags_the_map_but_blames_no_structure(tmp_path, acdc_case):
    case, guard = acdc_case
    holed = add_hole(case.label.array, np.random.default_rng(1))
    shape = ShapeAssessment(guard.assess(holed, case.label.spacing), guard.plausibility, GUARD.name)
    summary = write_bundle(tmp_path / "hole", case.image, case.label.with_array(holed, kind="label"), ACDC, shape=shape)
    qa = json.loads((tmp_path / "hole" / "qa.json").read_text())["shape"]
    assert qa["flagged"] and qa["blamed"] == [] and qa == summary.qa["shape"]
    assert summary.flags == [{"name": "shape", "value": qa["score"], "flag": "implausible_shape"}]
    assert "no single structure blamed" in (tmp_path / "hole" / "report.html").read_text()


def test_swapped_classes_blame_both_structures(tmp_path, acdc_case):
    case, guard = acdc_case
    swapped = swap_classes(case.label.array, np.random.default_rng(1))
    values = set(np.unique(swapped[swapped != case.label.array]).tolist())
    qa, stats, _ = _bundle(tmp_path, "swap", case, guard, swapped)
    assert qa["flagged"] and {ACDC.names[ACDC.values.index(v)] for v in values} <= set(qa["blamed"])


class _Heart(nn.Module):
    """An oracle 'network': class 1 where the normalised intensity exceeds 1/2."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.zeros_like(x), 20 * (x - 0.5)], dim=1)


def _member(table: LabelTable) -> tuple[nn.Module, dict]:
    meta = {"labels": table.to_json(), "out_channels": len(table) + 1, "spacing": [2.0, 2.0, 2.0],
            "patch_size": [8, 8, 8], "normalization": {"scheme": "ct", "clip": [0.0, 100.0], "mean": 0.0, "std": 100.0}}
    return _Heart(), meta


def test_segment_case_scores_with_the_named_guard_only():
    torch.set_num_threads(1)
    z, y, x = np.meshgrid(*[np.arange(n) for n in (12, 40, 40)], indexing="ij")
    image = Volume(np.where((y - 20) ** 2 + (x - 20) ** 2 < 81, 100, 0).astype(np.int16), spacing=(2.0, 2.0, 2.0))
    members = [_member(LabelTable((Label(1, "right_ventricle", (0, 151, 206)),)))]
    config = InferenceConfig(threads=1)
    assert segment_case(image, Ensemble.from_networks(members), config).shape is None
    result = segment_case(image, Ensemble.from_networks(members, {"shape_guard": str(GUARD)}), config)
    assert result.shape is not None and result.shape.guard == "shape-ae-acdc" and "shape_guard" in result.timings
    assert 0.0 <= result.shape.plausibility.score <= 1.0
    assert result.shape.plausibility.dice[1] < 1.0  # a cylinder of one class is not a heart
    with pytest.raises(ConfigError, match="shape guard knows labels 1..3"):
        segment_case(image, Ensemble.from_networks([_member(LabelTable((Label(5, "tumour", (255, 0, 0)),)))],
                                                   {"shape_guard": str(GUARD)}), config)


def test_acdc_config_and_ensemble_json_name_the_shipped_guard():
    from deconvseg.pipeline.config import load_config
    from deconvseg.pipeline.training.trainer import TrainConfig

    root = Path(__file__).resolve().parents[1]
    config = load_config(root / "configs" / "acdc.yaml", TrainConfig)
    ensemble = json.loads((root / "models" / "weights" / "acdc" / "ensemble.json").read_text())
    assert ensemble["shape_guard"] == config.shape_guard
    assert (root / config.out / config.shape_guard).resolve() == GUARD


def test_train_ensemble_writes_the_shape_guard_it_is_given(tmp_path):
    from deconvseg.pipeline.training.trainer import MemberConfig, train_ensemble
    from deconvseg.pipeline.training.data import load_training_data
    from tests.test_training import TINY_NET, tiny_config

    torch.set_num_threads(1)
    members = [MemberConfig(name=n, arch_kwargs=TINY_NET, seed=i, steps=2) for i, n in enumerate("ab")]
    config = tiny_config(tmp_path / "ens", steps=2, members=members, shape_guard="../guard")
    data = load_training_data(config.data)
    written = train_ensemble(config, data)
    assert written["shape_guard"] == "../guard"
    assert json.loads((tmp_path / "ens" / "ensemble.json").read_text())["shape_guard"] == "../guard"
    without = train_ensemble(tiny_config(tmp_path / "ens", steps=2, members=members), data)  # members kept
    assert "shape_guard" not in without
