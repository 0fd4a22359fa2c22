"""``segment_case`` end to end (oracle and registry networks) and the ``deconvseg segment`` command."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from deconvseg.models.registry import build_model
from deconvseg.pipeline.checkpoints import save_checkpoint
from deconvseg.pipeline.ensemble import Ensemble, load_ensemble
from deconvseg.pipeline.errors import ConfigError
from deconvseg.pipeline.io.volumes import read_volume, write_volume
from deconvseg.pipeline.labels import Label, LabelTable
from deconvseg.pipeline.segment import InferenceConfig, segment_case
from deconvseg.pipeline.volume import Volume

TABLE = LabelTable((Label(5, "tumour", (255, 0, 0)),))
SPEC = {"scheme": "ct", "clip": [0.0, 100.0], "mean": 0.0, "std": 100.0}


class Threshold(nn.Module):
    """An oracle 'network': class 1 where the normalised intensity exceeds 1/2."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.zeros_like(x), 20 * (x - 0.5)], dim=1)


def _meta(spacing, patch, table=TABLE) -> dict:
    return {
        "labels": table.to_json(),
        "out_channels": len(table) + 1,
        "spacing": list(spacing),
        "patch_size": list(patch),
        "normalization": SPEC,
    }


def _sphere(shape=(24, 40, 36), spacing=(1.0, 1.2, 1.5), island=False) -> tuple[Volume, np.ndarray]:
    z, y, x = np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, reversed(spacing))], indexing="ij")
    inside = (z - 18) ** 2 + (y - 24) ** 2 + (x - 18) ** 2 < 12.0**2
    array = np.where(inside, 100, 0).astype(np.int16)
    if island:
        array[2:4, 2:4, 2:4] = 100  # 8 voxels, 14.4 mm^3
    direction = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    return Volume(array, spacing=spacing, origin=(10.0, -5.0, 3.0), direction=direction), inside


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * (a & b).sum() / (a.sum() + b.sum())


def test_oracle_ensemble_at_two_working_spacings_lands_on_the_input_grid():
    image, inside = _sphere()
    members = [(Threshold(), _meta((2.0, 2.0, 2.0), (8, 8, 8))), (Threshold(), _meta((3.0, 3.0, 3.0), (6, 6, 6)))]
    result = segment_case(image, Ensemble.from_networks(members), InferenceConfig(threads=1))
    assert result.labels.same_grid(image) and result.labels.kind == "label"
    assert result.labels.array.dtype == np.uint8 and set(np.unique(result.labels.array)) == {0, 5}
    assert _dice(result.labels.array == 5, inside) > 0.93
    u = result.uncertainty
    assert u.same_grid(image) and u.array.dtype == np.float32 and 0.0 <= u.array.min() and u.array.max() <= 1.0
    assert u.array[~inside].mean() < 0.05
    assert set(result.structure_uncertainty) == {5} and 0.0 <= result.structure_uncertainty[5] <= 1.0
    assert {"resample", "normalize", "inference", "fusion", "uncertainty", "refine", "restore"} <= set(result.timings)
    assert result.summary[5]["mean_probability"] > 0.8


def test_progress_reports_every_members_windows_and_each_stage():
    image, _ = _sphere()
    members = [(Threshold(), _meta((2.0, 2.0, 2.0), (8, 8, 8))), (Threshold(), _meta((3.0, 3.0, 3.0), (6, 6, 6)))]
    ensemble = Ensemble.from_networks(members)
    events: list[tuple[str, int, int]] = []
    segment_case(image, ensemble, InferenceConfig(threads=1), progress=lambda *event: events.append(event))
    for member in ensemble.members:
        windows = [(done, total) for stage, done, total in events if stage == f"member {member.name}"]
        assert windows[0][0] == 0 and windows[-1][0] == windows[-1][1] > 1
        assert [d for d, _ in windows] == sorted(d for d, _ in windows)
    stages = [stage for stage, done, _ in events if done == 1 and not stage.startswith("member")]
    assert {"resample", "fusion", "uncertainty", "refine", "restore"} <= set(stages)
    assert stages.index("restore") > stages.index("fusion")


def test_fitted_windows_run_fewer_windows_with_the_same_result():
    image, _ = _sphere()
    ensemble = Ensemble.from_networks([(Threshold(), _meta((2.0, 2.0, 2.0), (8, 8, 8)))])
    results, windows = {}, {}
    for window in ("patch", "fit"):
        events: list[tuple[str, int, int]] = []
        config = InferenceConfig(threads=1, window=window, crop_foreground=False)
        results[window] = segment_case(image, ensemble, config, progress=lambda *event: events.append(event))
        windows[window] = max(total for stage, _, total in events if stage.startswith("member"))
    assert windows["fit"] < windows["patch"]
    # The threshold is voxel-wise, so any tiling gives the same map (a network's would differ slightly).
    np.testing.assert_array_equal(results["fit"].labels.array, results["patch"].labels.array)


def test_stored_plan_refines_and_refine_switch_turns_it_off():
    image, _ = _sphere(island=True)
    plan = {"postprocess": {"steps": [{"step": "remove_islands", "label": 5, "params": {"min_ml": 0.05}}]}}
    ensemble = Ensemble.from_networks([(Threshold(), _meta((1.0, 1.2, 1.5), (8, 8, 8)))], plan)
    kept = segment_case(image, ensemble, InferenceConfig(threads=1, refine=False))
    refined = segment_case(image, ensemble, InferenceConfig(threads=1))
    assert kept.labels.array[2:4, 2:4, 2:4].all() and not refined.labels.array[2:4, 2:4, 2:4].any()
    assert (refined.labels.array == 5).sum() > 1000


def test_members_with_different_label_tables_are_refused():
    other = LabelTable((Label(1, "organ", (0, 255, 0)),))
    members = [
        (Threshold(), _meta((2.0, 2.0, 2.0), (8, 8, 8))),
        (Threshold(), _meta((2.0, 2.0, 2.0), (8, 8, 8), other)),
    ]
    with pytest.raises(ConfigError, match="label tables"):
        Ensemble.from_networks(members)


def test_members_written_before_and_after_a_label_field_was_added_fuse():
    newer = _meta((2.0, 2.0, 2.0), (8, 8, 8))
    newer["labels"] = [{**label, "modifier": None} for label in newer["labels"]]  # what a newer trainer writes
    ensemble = Ensemble.from_networks([(Threshold(), _meta((2.0, 2.0, 2.0), (8, 8, 8))), (Threshold(), newer)])
    assert len(ensemble.members) == 2


@pytest.fixture
def ensemble_dir(tmp_path):
    """Two randomly initialised registry networks (a DeconvNet and a two-scale net) on disk."""
    torch.manual_seed(0)
    root = tmp_path / "ensemble"
    deconv = {"in_channels": 1, "out_channels": 2, "widths": [4, 8]}
    two = {"in_channels": 1, "out_channels": 2, "widths": [4, 8], "context_factor": [1, 2, 2]}
    for name, arch, kwargs, extra in [
        ("a", "deconvnet3d", deconv, {}),
        ("b", "two_scale", two, {"context_factor": [1, 2, 2]}),
    ]:
        meta = {
            **_meta((3.0, 3.0, 3.0), (8, 8, 8)),
            "arch_kwargs": kwargs,
            **extra,
            "metrics": {"val_dice": {"tumour": 0.5}, "mean_dice": 0.5},
        }
        save_checkpoint(root / name, build_model(arch, **kwargs), meta)
    (root / "ensemble.json").write_text(json.dumps({"fusion": "weighted_mean"}))
    return root


def test_registry_ensemble_with_a_two_scale_member(ensemble_dir):
    image, _ = _sphere()
    ensemble = load_ensemble(ensemble_dir)
    result = segment_case(image, ensemble, InferenceConfig(threads=1, bf16=True))
    assert result.labels.same_grid(image) and set(np.unique(result.labels.array)) <= {0, 5}
    staple = segment_case(image, ensemble, InferenceConfig(threads=1, fusion="staple"))
    assert staple.labels.array.shape == image.shape


def test_cli_writes_one_bundle_per_input(tmp_path, ensemble_dir):
    from deconvseg.flows.cli import app

    image, _ = _sphere()
    first, second = write_volume(image, tmp_path / "first.nii.gz"), write_volume(image, tmp_path / "second.nrrd")
    out = tmp_path / "out"
    runner = CliRunner()
    result = runner.invoke(
        app,
        [
            "segment",
            str(first),
            str(second),
            "--out",
            str(out),
            "--model",
            str(ensemble_dir),
            "--threads",
            "1",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert [c["case_id"] for c in summary["cases"]] == ["first", "second"]
    labels = read_volume(out / "first" / "labels.nii.gz", kind="label")
    assert labels.same_grid(image)
    assert (out / "second" / "uncertainty.nii.gz").is_file()
    manifest = json.loads((out / "first" / "manifest.json").read_text())
    assert "inference" in json.dumps(manifest) and "restore" in json.dumps(manifest)
    # piped (no terminal): a line per finished stage and member, then the case's line
    piped = runner.invoke(app, ["segment", str(first), "--out", str(tmp_path / "o2"), "--model", str(ensemble_dir)])
    member = load_ensemble(ensemble_dir).members[0].name
    lines = piped.stdout.splitlines()
    assert any(line.startswith(f"first: member {member}: ") and " windows in " in line for line in lines), lines
    assert lines.index(next(x for x in lines if x.startswith("first: restore in"))) < len(lines) - 1

    missing = runner.invoke(
        app, ["segment", str(tmp_path / "nope.nii.gz"), "--out", str(out), "--model", str(ensemble_dir)]
    )
    assert missing.exit_code == 2 and "nope.nii.gz: no such file" in missing.output
    bad_model = runner.invoke(app, ["segment", str(first), "--out", str(out), "--model", str(tmp_path / "none")])
    assert bad_model.exit_code == 2 and "no such model folder" in bad_model.output


def test_members_trained_under_bf16_run_under_it_unless_the_caller_says_otherwise():
    from deconvseg.pipeline.segment import InferenceConfig, effective_config

    def model(*flags):
        return Ensemble.from_networks(
            [(Threshold(), {**_meta((2.0, 2.0, 2.0), (8, 8, 8)), "training": flag}) for flag in flags]
        )

    bf16, fp32 = {"bf16": True}, {"bf16": False}
    assert effective_config(InferenceConfig(threads=1), model(bf16, bf16)).bf16
    assert effective_config(InferenceConfig(threads=1), model(bf16, bf16)).threads == 1
    assert not effective_config(InferenceConfig(bf16=False), model(bf16, bf16)).bf16
    assert not effective_config(InferenceConfig(), model(bf16, fp32)).bf16
    assert not effective_config(InferenceConfig(), model({})).bf16
    # the model's measured inference settings (ensemble.json "inference") fill what the caller left unset
    tuned = model(bf16).with_settings(inference={"batch_size": 4, "overlap": 0.25})
    assert effective_config(InferenceConfig(), tuned).batch_size == 4
    assert effective_config(InferenceConfig(overlap=0.5), tuned).overlap == 0.5
