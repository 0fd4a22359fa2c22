"""Phantoms: deterministic, labelled as documented, volumes close to the analytic ones."""

from __future__ import annotations

import numpy as np
import pytest

from deconvseg.pipeline.phantoms import PHANTOM_LABELS, make_phantom, phantom_volumes_ml


@pytest.mark.parametrize("modality", ["CT", "MR"])
def test_same_seed_same_phantom_other_seed_differs(modality):
    image_a, label_a = make_phantom(modality, shape=(16, 32, 32), spacing=(6.0, 6.0, 8.0), seed=3)
    image_b, label_b = make_phantom(modality, shape=(16, 32, 32), spacing=(6.0, 6.0, 8.0), seed=3)
    image_c, label_c = make_phantom(modality, shape=(16, 32, 32), spacing=(6.0, 6.0, 8.0), seed=4)
    np.testing.assert_array_equal(image_a.array, image_b.array)
    np.testing.assert_array_equal(label_a.array, label_b.array)
    assert not np.array_equal(label_a.array, label_c.array)
    assert image_a.same_grid(label_a) and image_a.modality == modality and label_a.kind == "label"


@pytest.mark.parametrize("seed", range(8))
def test_voxel_volumes_within_one_percent_of_analytic(seed):
    _, label = make_phantom("CT", seed=seed)
    expected = phantom_volumes_ml(seed=seed)
    assert expected == label.metadata["analytic_volumes_ml"]
    for entry in PHANTOM_LABELS:
        measured = np.count_nonzero(label.array == entry.value) * label.voxel_volume_ml
        assert measured == pytest.approx(expected[entry.name], rel=0.01), entry.name


def test_ct_intensities_are_realistic_and_organs_sit_where_anatomy_says():
    image, label = make_phantom("CT", seed=0)
    hu = image.array.astype(float)
    assert image.array.dtype == np.int16 and label.array.dtype == np.uint8
    assert np.median(hu[0, :3, :3]) == pytest.approx(-1000, abs=40)  # air in the corner
    assert np.median(hu[label.array == 1]) == pytest.approx(60, abs=10)  # liver
    assert hu.max() > 700  # bone
    assert set(np.unique(label.array)) == {0, *PHANTOM_LABELS.values}
    # LPS: +x is patient left. The liver lies on the right (lower x), the spleen on the left.
    centre_x = {v: label.index_to_world(np.argwhere(label.array == v)[:, ::-1]).mean(0)[0] for v in (1, 2, 3, 4)}
    assert centre_x[1] < 0 < centre_x[2] and centre_x[3] < 0 < centre_x[4]


def test_mr_is_non_negative_float_and_unknown_modality_is_refused():
    image, _ = make_phantom("MR", shape=(64, 128, 128), seed=1)
    assert image.array.dtype == np.float32 and image.array.min() >= 0
    with pytest.raises(ValueError, match="modality"):
        make_phantom("PET")
