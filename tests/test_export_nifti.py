"""labels.nii.gz / uncertainty.nii.gz / labels.json: write, read back with nibabel and SimpleITK."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from export_cases import GEOMETRIES, TABLE, make_case, sample_by_world, sitk_affine
from deconvseg.pipeline.export.nifti import write_labels_json, write_labels_nifti, write_uncertainty_nifti

RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


@pytest.mark.parametrize("geometry", sorted(GEOMETRIES))
def test_labels_nifti_round_trip_in_world_coordinates(tmp_path, geometry):
    _, labels = make_case(geometry)
    path = write_labels_nifti(tmp_path / "labels.nii.gz", labels)

    nii = nib.load(path)  # independent reader: array [i, j, k] (x, y, z), affine to RAS
    assert np.issubdtype(nii.get_data_dtype(), np.unsignedinteger)
    back = sample_by_world(np.asarray(nii.dataobj), RAS_TO_LPS @ nii.affine, labels)
    np.testing.assert_array_equal(back, labels.array)

    image = sitk.ReadImage(str(path))
    back = sample_by_world(sitk.GetArrayFromImage(image), sitk_affine(image), labels)
    np.testing.assert_array_equal(back, labels.array)
    np.testing.assert_allclose(np.asarray(image.GetDirection()).reshape(3, 3), labels.direction, atol=1e-5)


def test_uncertainty_nifti_keeps_values_and_grid(tmp_path, rng):
    _, labels = make_case("oblique")
    uncertainty = labels.with_array(rng.random(labels.shape).astype(np.float32), kind="image")
    image = sitk.ReadImage(str(write_uncertainty_nifti(tmp_path / "u.nii.gz", uncertainty)))
    back = sample_by_world(sitk.GetArrayFromImage(image), sitk_affine(image), uncertainty)
    np.testing.assert_allclose(back, uncertainty.array, atol=0.5 / 255 + 1e-6)
    stored = nib.load(tmp_path / "u.nii.gz")
    assert stored.get_data_dtype() == np.uint8  # steps of 1/255: a quarter of float32's bytes
    np.testing.assert_allclose(stored.get_fdata().T, uncertainty.array, atol=0.5 / 255 + 1e-6)


def test_labels_json_holds_names_colours_and_codes(tmp_path):
    items = json.loads(write_labels_json(tmp_path / "labels.json", TABLE).read_text())
    assert [item["value"] for item in items] == TABLE.values
    assert items[0]["name"] == "liver" and items[0]["color"] == [221, 130, 101]
    assert items[0]["code"] == {"value": "10200004", "meaning": "Liver structure", "scheme": "SCT"}
    assert items[1]["code"] is None
