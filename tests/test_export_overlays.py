"""Overlay mosaics: radiological orientation whatever the storage order, aspect from the spacing."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from export_cases import make_case
from deconvseg.pipeline.export.overlays import _lps, write_overlays
from deconvseg.pipeline.io.sitk_bridge import to_sitk
from deconvseg.pipeline.labels import Label, LabelTable
from deconvseg.pipeline.volume import Volume

BLUE = LabelTable((Label(1, "marker", (0, 0, 255)),))


def _marker_case(direction: np.ndarray) -> tuple[Volume, Volume]:
    """A 40 x 40 x 20 mm cube; the marker sits at the patient's left, anterior, superior corner."""
    shape, spacing = (10, 40, 40), (1.0, 1.0, 2.0)
    image = Volume(np.zeros(shape, np.int16), spacing, origin=(0, 0, 0), direction=np.eye(3), metadata={"modality": "CT"})
    world_marker = image.index_to_world([[35, 4, 8]])[0]  # x high = left, y low = anterior, z high = superior
    # The same physical box stored with ``direction``: origin at the corner that maps to index 0.
    corner = np.where(np.diag(direction) < 0, [39.0, 39.0, 18.0], 0.0)
    stored = Volume(np.zeros(shape, np.int16), spacing, origin=corner, direction=direction, metadata={"modality": "CT"})
    i, j, k = np.round(stored.world_to_index(world_marker)[0]).astype(int)
    labels = np.zeros(shape, np.uint8)
    labels[max(k - 1, 0):k + 2, j - 2:j + 3, i - 2:i + 3] = 1
    return stored, stored.with_array(labels, kind="label")


def _blue_centroid(path) -> tuple[float, float]:
    rgb = np.asarray(Image.open(path).convert("RGB")).astype(int)
    rows, cols = np.nonzero((rgb[..., 2] > 200) & (rgb[..., 0] < 50))
    return rows.mean() / rgb.shape[0], cols.mean() / rgb.shape[1]


@pytest.mark.parametrize("direction", [np.eye(3), np.diag([-1.0, -1.0, 1.0]), -np.eye(3)], ids=["lps", "ras", "negated"])
def test_views_follow_the_radiological_convention(tmp_path, direction):
    image, labels = _marker_case(direction)
    paths = write_overlays(tmp_path, image, labels, BLUE, slices=1, alpha=1.0)
    row, col = _blue_centroid(paths["axial"])
    assert col > 0.7 and row < 0.3  # patient's left on the image's right, anterior up
    row, col = _blue_centroid(paths["coronal"])
    assert col > 0.7 and row < 0.3  # left on the right, superior up
    row, col = _blue_centroid(paths["sagittal"])
    assert col < 0.3 and row < 0.3  # anterior on the left, superior up


def test_aspect_ratio_comes_from_the_spacing(tmp_path):
    image, labels = _marker_case(np.eye(3))  # 40 mm wide (x), 40 mm deep (y), 20 mm high (z)
    paths = write_overlays(tmp_path, image, labels, BLUE, slices=1, tile_px=200)
    assert Image.open(paths["axial"]).size == (200, 200)
    assert Image.open(paths["coronal"]).size == (200, 100)
    assert Image.open(paths["sagittal"]).size == (200, 100)


def test_uncertainty_view_is_written_only_with_uncertainty(tmp_path, rng):
    image, labels = make_case("oblique")
    assert "uncertainty" not in write_overlays(tmp_path / "a", image, labels, LabelTable(()))
    uncertainty = labels.with_array(rng.random(labels.shape).astype(np.float32), kind="image")
    table = LabelTable((Label(1, "a", (255, 0, 0)), Label(2, "b", (0, 255, 0)), Label(3, "c", (0, 0, 255))))
    paths = write_overlays(tmp_path / "b", image, labels, table, uncertainty)
    assert sorted(paths) == ["axial", "coronal", "sagittal", "uncertainty"]
    heat = np.asarray(Image.open(paths["uncertainty"]).convert("RGB"))
    assert heat.std() > 10  # not blank


@pytest.mark.parametrize("order", list(itertools.permutations(range(3))))
def test_lps_views_match_dicomorient_for_every_axis_aligned_direction(order, rng):
    """The no-copy path (transpose and flips) gives SimpleITK's DICOMOrient voxels and spacing."""
    array = rng.integers(0, 1000, size=(3, 4, 5)).astype(np.int16)
    for signs in itertools.product((1.0, -1.0), repeat=3):
        direction = np.zeros((3, 3))
        direction[list(order), [0, 1, 2]] = signs  # index axis i runs along world axis order[i]
        volume = Volume(array, (0.5, 0.7, 2.0), origin=(1.0, -2.0, 3.0), direction=direction)
        oriented = sitk.DICOMOrient(to_sitk(volume), "LPS")
        ours, spacing = _lps(volume)
        np.testing.assert_array_equal(ours, sitk.GetArrayFromImage(oriented))
        np.testing.assert_allclose(spacing, oriented.GetSpacing())
