"""``deconvseg autoencoder`` / ``shape-guard``: one-line errors in-process; the MNIST flow end to end (slow)."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest
from typer.testing import CliRunner

from deconvseg.flows.cli import app
from tests.test_mnist import write_split

runner = CliRunner()


def test_unknown_model_is_a_one_line_error(tmp_path):
    result = runner.invoke(app, ["autoencoder", "--models", "conv,vae", "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert "unknown or empty model list ['vae']" in result.output
    assert not any(tmp_path.iterdir())


def test_truncated_mnist_is_a_one_line_error(tmp_path, rng):
    write_split(tmp_path, rng.integers(0, 256, size=(4, 28, 28)), rng.integers(0, 10, size=4), compress=True)
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(raw[:-28]))
    result = runner.invoke(app, ["autoencoder", "--data", str(tmp_path), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "t10k-images-idx3-ubyte.gz: truncated or padded data" in result.output
    assert not (tmp_path / "out").exists()


def test_shape_guard_needs_the_split_lists(tmp_path):
    result = runner.invoke(app, ["shape-guard", "--data", str(tmp_path), "--out", str(tmp_path / "guard")])
    assert result.exit_code == 2 and "split list not found" in result.output


@pytest.mark.slow
def test_mnist_flow_writes_the_comparison(tmp_path, rng, prefect_env, monkeypatch):
    images = rng.integers(0, 256, size=(64, 28, 28))
    write_split(tmp_path, images, rng.integers(0, 10, size=64), compress=True)
    for stem in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"):
        (tmp_path / f"{stem}.gz").write_bytes((tmp_path / f"{stem.replace('train', 't10k')}.gz").read_bytes())
    for key, value in prefect_env.items():
        monkeypatch.setenv(key, value)
    out = tmp_path / "out"
    result = runner.invoke(app, ["autoencoder", "--data", str(tmp_path), "--out", str(out), "--epochs", "1"])
    assert result.exit_code == 0, result.output
    rows = json.loads((out / "comparison.json").read_text())["rows"]
    assert [r["model"] for r in rows] == ["conv", "conv_upsample", "fc"]
    assert all(r["code_size"] == 32 and np.isfinite(r["test_mse"]) for r in rows)
    assert (out / "reconstructions.png").stat().st_size > 1000 and (out / "loss_curves.png").is_file()
    assert "| conv_upsample | 32 |" in result.output
