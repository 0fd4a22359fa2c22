"""Comparison report: the files exist, the table reads back, the PNGs are real images."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from deconvseg.pipeline.autoencoding.report import comparison_markdown, write_comparison

ROWS = [
    {"model": "conv", "code_size": 32, "params": 10, "epochs": 2, "train_s": 1.2, "test_mse": 0.0123456, "psnr": 19.08},
    {"model": "fc", "code_size": 32, "params": 40, "epochs": 2, "train_s": 0.4, "test_mse": 0.02, "psnr": 16.99},
]


def test_markdown_table_has_one_line_per_model():
    lines = comparison_markdown(ROWS).splitlines()
    assert len(lines) == 4
    assert lines[2] == "| conv | 32 | 10 | 2 | 1 | 0.01235 | 19.08 |"


def test_write_comparison_reads_back(tmp_path, rng):
    originals = rng.random((3, 28, 28))
    recons = {"conv": rng.random((3, 28, 28)), "fc": rng.random((3, 28, 28))}
    paths = write_comparison(tmp_path / "out", ROWS, originals, recons, {"conv": [1.0, 0.5], "fc": [1.0, 0.7]})
    data = json.loads(paths["json"].read_text())
    assert data["rows"] == ROWS and data["loss_per_epoch"]["fc"] == [1.0, 0.7]
    assert paths["markdown"].read_text() == comparison_markdown(ROWS)
    for key in ("grid", "loss"):
        with Image.open(paths[key]) as image:
            assert image.format == "PNG" and min(image.size) > 100
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "comparison.json", "comparison.md", "loss_curves.png", "reconstructions.png"
    ]
    assert np.isfinite(originals).all()
