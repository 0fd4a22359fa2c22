"""stats.json / stats.csv: volumes in mL against analytic volumes, intensities, border and QA flags."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from export_cases import TABLE, make_case
from deconvseg.pipeline.export.stats import StatsConfig, compute_stats, write_stats
from deconvseg.pipeline.labels import Label, LabelTable
from deconvseg.pipeline.volume import Volume


def test_phantom_volumes_match_analytic_within_one_percent():
    from deconvseg.pipeline.phantoms import PHANTOM_LABELS, make_phantom

    image, labels = make_phantom("CT", shape=(48, 96, 96), spacing=(2.0, 2.0, 3.0), seed=0)
    rows = {row["name"]: row for row in compute_stats(image, labels, PHANTOM_LABELS)}
    for name, expected in labels.metadata["analytic_volumes_ml"].items():
        assert rows[name]["volume_ml"] == pytest.approx(expected, rel=0.01), name
        assert rows[name]["flags"] == [], name


def test_adult_ranges_config_flags_the_small_phantom_liver():
    from deconvseg.pipeline.config import load_config
    from deconvseg.pipeline.phantoms import PHANTOM_LABELS, make_phantom

    config = load_config(Path(__file__).parents[1] / "configs" / "export-adult.yaml", StatsConfig)
    image, labels = make_phantom("CT", shape=(24, 48, 48), spacing=(2.0, 2.0, 3.0), seed=0)
    rows = {row["name"]: row for row in compute_stats(image, labels, PHANTOM_LABELS, config=config)}
    assert rows["liver"]["volume_ml"] < 500 and rows["liver"]["flags"] == ["implausible_volume"]


def test_sphere_volume_with_anisotropic_oblique_spacing():
    spacing = (0.7, 0.9, 1.6)
    radius = 14.0  # mm
    shape = (24, 40, 48)
    direction = np.array([[0.0, 1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])  # rotated in plane
    k, j, i = np.indices(shape)
    centre = (np.array(shape[::-1]) - 1) / 2
    mm = (np.stack([i, j, k], axis=-1) - centre) * spacing
    mask = (mm ** 2).sum(axis=-1) <= radius ** 2
    image = Volume(np.where(mask, 60, -100).astype(np.int16), spacing, direction=direction, metadata={"modality": "CT"})
    labels = image.with_array(mask.astype(np.uint8), kind="label")
    row = compute_stats(image, labels, LabelTable((Label(1, "sphere", (255, 0, 0)),)))[0]
    assert row["volume_ml"] == pytest.approx(4 / 3 * np.pi * radius ** 3 / 1000, rel=0.01)
    assert row["mean_intensity"] == 60 and row["std_intensity"] == 0 and row["intensity_unit"] == "HU"
    assert row["touches_border"] is False
    # bounding box in LPS mm: x of the world is -(voxel y) here, so its extent is the y extent
    extent = np.subtract(row["bbox_max_mm"], row["bbox_min_mm"])
    assert extent == pytest.approx([2 * radius] * 3, abs=2 * max(spacing))


def test_flags_border_missing_implausible_and_uncertain(rng):
    image, labels = make_case("ras")
    uncertainty = labels.with_array(np.where(labels.array == 3, 0.6, 0.05).astype(np.float32), kind="image")
    config = StatsConfig(plausible_volume_ml={"liver": (1000.0, 2500.0), "box": (0.0, 10.0)}, high_uncertainty=0.3)
    rows = {row["name"]: row for row in compute_stats(image, labels, TABLE, uncertainty, config)}
    assert rows["box"]["touches_border"] is True and rows["box"]["volume_ml"] > 0  # reported, not zeroed
    assert rows["liver"]["touches_border"] is False
    assert rows["liver"]["flags"] == ["implausible_volume"]
    assert rows["box"]["flags"] == []
    assert rows["ring"]["flags"] == ["high_uncertainty"] and rows["ring"]["mean_uncertainty"] == pytest.approx(0.6)
    assert rows["absent"]["flags"] == ["missing"] and rows["absent"]["volume_ml"] == 0
    mask = labels.array == 1
    assert rows["liver"]["voxels"] == int(mask.sum())
    assert rows["liver"]["volume_ml"] == pytest.approx(mask.sum() * 0.8 * 1.1 * 2.5 / 1000, abs=1e-4)
    assert rows["liver"]["mean_intensity"] == pytest.approx(image.array[mask].mean(), abs=1e-3)
    assert rows["liver"]["std_intensity"] == pytest.approx(image.array[mask].std(), abs=1e-3)
    quiet = {r["name"]: r for r in compute_stats(image, labels, TABLE, config=StatsConfig(expected=[]))}
    assert quiet["absent"]["flags"] == []
    # a structure cut by the field of view is not called too small, but too large still counts
    cut = StatsConfig(plausible_volume_ml={"box": (1000.0, 2000.0)})
    assert {r["name"]: r for r in compute_stats(image, labels, TABLE, config=cut)}["box"]["flags"] == []
    big = StatsConfig(plausible_volume_ml={"box": (0.0, 0.01)})
    assert {r["name"]: r for r in compute_stats(image, labels, TABLE, config=big)}["box"]["flags"] == ["implausible_volume"]


def test_stats_files(tmp_path):
    image, labels = make_case("lps")
    rows = compute_stats(image, labels, TABLE)
    json_path, csv_path = write_stats(tmp_path, rows)
    loaded = json.loads(json_path.read_text())
    assert {"name", "value", "volume_ml", "voxels", "touches_border"} <= set(loaded[0])
    assert [row["name"] for row in loaded] == TABLE.names
    with open(csv_path, newline="") as handle:
        table = list(csv.DictReader(handle))
    assert [row["name"] for row in table] == TABLE.names
    assert float(table[0]["volume_ml"]) == pytest.approx(loaded[0]["volume_ml"])
    assert table[3]["flags"] == "missing"
