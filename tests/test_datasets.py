"""Datasets: ACDC HDF5 folder, MSD / nnU-Net v2 layouts and CSV manifests, on real files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from deconvseg.pipeline.io.datasets import ACDC_NOMINAL_SPACING, read_acdc, read_manifest, read_msd, read_msd_labels
from deconvseg.pipeline.errors import InputError
from deconvseg.pipeline.io.volumes import write_volume
from deconvseg.pipeline.phantoms import make_phantom
from tests.conftest import shared_path

SMALL = {"shape": (8, 16, 16), "spacing": (12.0, 12.0, 20.0)}


def test_acdc_split_list_gives_nominal_geometry_and_labels():
    root = shared_path("acdc")
    cases = read_acdc(root, root / "splits" / "val.list")
    assert len(cases) == 20 and cases[0].case_id == "patient028_frame01"
    case = cases[0]
    assert case.image.spacing == ACDC_NOMINAL_SPACING and case.image.metadata["spacing_nominal"] is True
    assert case.image.modality == "MR" and case.label.kind == "label"
    assert case.image.same_grid(case.label)
    assert case.image.array.dtype == np.float32 and 0.0 <= case.image.array.min() <= case.image.array.max() <= 1.0
    assert set(np.unique(case.label.array)) == {0, 1, 2, 3}


def test_acdc_names_and_spacing_override_and_missing_name():
    root = shared_path("acdc")
    (case,) = read_acdc(root, ["patient002_frame01"], spacing=(1.0, 1.0, 5.0))
    assert case.image.shape == (10, 256, 232) and case.label.spacing == (1.0, 1.0, 5.0)
    with pytest.raises(InputError, match="patient999_frame01.h5: ACDC volume 'patient999_frame01' not found"):
        read_acdc(root, ["patient999_frame01"])


def _write_cases(folder, ids, suffix="_0000"):
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    for seed, case_id in enumerate(ids):
        image, label = make_phantom("CT", seed=seed, **SMALL)
        write_volume(image, folder / "imagesTr" / f"{case_id}{suffix}.nii.gz")
        write_volume(label, folder / "labelsTr" / f"{case_id}.nii.gz")


def test_msd_layout_reads_cases_modality_and_labels(tmp_path):
    _write_cases(tmp_path, ["liver_1", "liver_2"], suffix="")
    spec = {
        "modality": {"0": "CT"},
        "labels": {"0": "background", "1": "liver", "2": "spleen"},
        "training": [{"image": f"./imagesTr/{c}.nii.gz", "label": f"./labelsTr/{c}.nii.gz"} for c in ("liver_1", "liver_2")],
    }
    (tmp_path / "dataset.json").write_text(json.dumps(spec))
    cases = read_msd(tmp_path)
    assert [c.case_id for c in cases] == ["liver_1", "liver_2"]
    assert cases[1].image.modality == "CT" and cases[1].image.same_grid(cases[1].label)
    np.testing.assert_array_equal(cases[1].label.array, make_phantom("CT", seed=1, **SMALL)[1].array)
    table = read_msd_labels(tmp_path)
    assert table.names == ["liver", "spleen"] and table.values == [1, 2]


def test_nnunet_v2_layout(tmp_path):
    _write_cases(tmp_path, ["case_a", "case_b", "case_c"])
    spec = {"channel_names": {"0": "CT"}, "labels": {"background": 0, "organ": 1}, "file_ending": ".nii.gz"}
    (tmp_path / "dataset.json").write_text(json.dumps(spec))
    cases = read_msd(tmp_path)
    assert [c.case_id for c in cases] == ["case_a", "case_b", "case_c"]
    assert read_msd_labels(tmp_path).names == ["organ"]


def test_msd_without_dataset_json_is_refused(tmp_path):
    with pytest.raises(InputError, match=r"dataset.json: no dataset.json"):
        read_msd(tmp_path)


def test_manifest_relative_paths_unlabelled_rows_and_modality(tmp_path):
    _write_cases(tmp_path, ["a", "b"])
    (tmp_path / "cases.csv").write_text(
        "case_id,image,label,modality\n"
        "a,imagesTr/a_0000.nii.gz,labelsTr/a.nii.gz,ct\n"
        "b,imagesTr/b_0000.nii.gz,,\n"
    )
    cases = read_manifest(tmp_path / "cases.csv")
    assert cases[0].label is not None and cases[0].image.modality == "CT"
    assert cases[1].label is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("id,image\nx,y\n", r"missing column\(s\) \['case_id'\]"),
        ("case_id,image\na,imagesTr/a_0000.nii.gz\na,imagesTr/a_0000.nii.gz\n", "case_id values repeat"),
        ("case_id,image\na,imagesTr/nowhere.nii.gz\n", "nowhere.nii.gz: no such file or folder"),
    ],
)
def test_bad_manifests_are_refused_with_the_reason(tmp_path, text, message):
    _write_cases(tmp_path, ["a"])
    (tmp_path / "cases.csv").write_text(text)
    with pytest.raises(InputError, match=message):
        read_manifest(tmp_path / "cases.csv")


def test_label_on_another_grid_is_refused(tmp_path):
    _write_cases(tmp_path, ["a"])
    image, _ = make_phantom("CT", shape=(8, 16, 18), spacing=(12.0, 12.0, 20.0))
    write_volume(image.with_array(np.zeros(image.shape, np.uint8), kind="label"), tmp_path / "labelsTr" / "a.nii.gz")
    (tmp_path / "cases.csv").write_text("case_id,image,label\na,imagesTr/a_0000.nii.gz,labelsTr/a.nii.gz\n")
    with pytest.raises(InputError, match="does not match its image's grid"):
        read_manifest(tmp_path / "cases.csv")
