"""``deconvseg train`` on a tiny phantom config, end to end, then ``deconvseg evaluate --json``."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from deconvseg.flows.cli import app
from deconvseg.pipeline.io.volumes import write_volume
from deconvseg.pipeline.phantoms import make_phantom

TINY = """
name: tiny
out: {out}
data:
  kind: phantom
  phantom: {{modality: CT, n_train: 2, n_val: 1, shape: [16, 32, 32], spacing: [8.0, 8.0, 12.0], seed: 3}}
patch_size: [8, 16, 16]
batch_size: 2
steps: 6
val_every: 6
threads: 1
members:
  - {{name: a, arch: deconvnet3d, seed: 0, arch_kwargs: {{widths: [4, 8, 16]}}}}
  - {{name: b, arch: deconvnet3d, seed: 1, arch_kwargs: {{widths: [4, 8, 16], skip: add}}}}
"""


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli-train")
    config = root / "tiny.yaml"
    config.write_text(TINY.format(out=root / "model"))
    result = CliRunner().invoke(app, ["train", str(config), "--quiet"])
    assert result.exit_code == 0, result.output
    return root, json.loads(result.output.strip().splitlines()[-1])


def test_train_writes_an_ensemble_folder(trained):
    root, summary = trained
    assert list(summary["members"]) == ["a", "b"]
    assert json.loads((root / "model" / "ensemble.json").read_text()) == summary
    for name in ("a", "b"):
        meta = json.loads((root / "model" / name / "model.json").read_text())
        assert meta["arch"] == "deconvnet3d" and meta["normalization"]["scheme"] == "ct"
        assert (root / "model" / name / "weights.safetensors").stat().st_size > 0


def test_evaluate_prints_the_json_keys(trained, tmp_path):
    root, _ = trained
    rows = ["case_id,image,label"]
    for seed in (20, 21):
        image, label = make_phantom("CT", shape=(16, 32, 32), spacing=(8.0, 8.0, 12.0), seed=seed)
        write_volume(image, tmp_path / f"img{seed}.nii.gz")
        write_volume(label, tmp_path / f"lbl{seed}.nii.gz")
        rows.append(f"case{seed},img{seed}.nii.gz,lbl{seed}.nii.gz")
    (tmp_path / "cases.csv").write_text("\n".join(rows) + "\n")
    result = CliRunner().invoke(app, ["evaluate", "--model", str(root / "model"), "--data", str(tmp_path / "cases.csv"), "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output.strip().splitlines()[-1])
    assert {"mean_dice", "dice", "hd95", "cases"} <= set(out)
    assert out["cases"] == 2 and set(out["dice"]) == {"liver", "spleen", "right_kidney", "left_kidney"}
    assert 0.0 <= out["mean_dice"] <= 1.0


def test_train_rejects_an_unknown_key_in_one_line(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("stepz: 3\n")
    result = CliRunner().invoke(app, ["train", str(config)])
    assert result.exit_code == 2
    assert "stepz" in result.output and len(result.output.strip().splitlines()) == 1
