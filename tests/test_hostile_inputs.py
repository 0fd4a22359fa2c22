"""The malformed-input corpus of issue 9, generated here (never committed), through every entry point.

For each entry, ``deconvseg info`` and ``deconvseg segment`` exit with status 2 and one line naming
the file and the problem, and leave no output behind; ``deconvseg export`` does the same for a label
map off its image's grid. One batch run takes the entries that ``tests/test_reliability_flows.py``
does not (large/zero headers, DICOM folders with two series, an SR only, mixed orientations) beside
good cases whose names and PatientID are hostile (``../``, non-ASCII, 300 characters): the failures
are rows with their reason, the good cases land inside the output folder under safe names.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ComprehensiveSRStorage, ExplicitVRLittleEndian, generate_uid
from typer.testing import CliRunner

from deconvseg.flows.cli import app
from flows_support import run, write_phantom, write_tiny_model
from tests.test_io_dicom import write_series

PATIENT = {"PatientName": "DOE^JANE", "PatientBirthDate": "19450317", "PatientID": "../../etc/passwd"}


def _mha_header(path: Path, size: str) -> Path:
    path.write_text(f"ObjectType = Image\nNDims = 3\nDimSize = {size}\nElementType = MET_FLOAT\nElementDataFile = LOCAL\n")
    return path


def _tag_patient(folder: Path, **values: str) -> Path:
    for path in folder.iterdir():
        ds = pydicom.dcmread(path)
        for key, value in values.items():
            setattr(ds, key, value)
        ds.save_as(path, enforce_file_format=True)
    return folder


def write_sr(path: Path) -> None:
    """A Comprehensive SR object: DICOM, but no image."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = ComprehensiveSRStorage, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = ComprehensiveSRStorage, meta.MediaStorageSOPInstanceUID, "SR"
    ds.update(PATIENT)
    ds.save_as(path, enforce_file_format=True)


def _tiny_ct(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(-100, 100, size=(6, 16, 16)).astype(np.int16)


def write_corpus(folder: Path) -> dict[str, tuple[Path, str]]:
    """Every hostile input of issue 9 under ``folder``: name -> (path, regex of the expected problem)."""
    folder.mkdir(parents=True, exist_ok=True)
    good = write_phantom(folder / "good-source.nii.gz", seed=7)
    corpus: dict[str, tuple[Path, str]] = {}

    (folder / "truncated.nii.gz").write_bytes(good.read_bytes()[:400])
    corpus["truncated"] = (folder / "truncated.nii.gz", r"truncated|not a readable")
    (folder / "magic.nii.gz").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(600))
    corpus["magic"] = (folder / "magic.nii.gz", r"not a readable NIfTI/NRRD/MHA image")
    (folder / "empty.nii.gz").write_bytes(b"")
    corpus["empty"] = (folder / "empty.nii.gz", r"empty file \(0 bytes\)")
    nib.save(nib.Nifti1Image(np.zeros((6, 7, 8, 2), np.float32), np.eye(4)), folder / "fourd.nii.gz")
    corpus["fourd"] = (folder / "fourd.nii.gz", r"image has 2 channels \(4D or multi-component\)")
    bad = np.zeros((6, 7, 8), np.float32)
    bad[1, 2, 3], bad[4, 5, 6] = np.nan, np.inf
    nib.save(nib.Nifti1Image(bad, np.eye(4)), folder / "naninf.nii.gz")
    corpus["naninf"] = (folder / "naninf.nii.gz", r"volume contains 2 NaN/Inf voxels")
    corpus["zero-axis"] = (_mha_header(folder / "zero-axis.mha", "16 0 16"), r"zero-size axis in image size \[16, 0, 16\]")
    corpus["huge"] = (_mha_header(folder / "huge.mha", "10000 10000 10000"), r"1e\+12 voxels exceed the limit")

    gap = [(0.0, 0.0, z) for z in (0.0, 2.0, 4.0, 8.0, 10.0, 12.0)]
    write_series(folder / "dicom-gap", _tiny_ct(), positions=gap)
    corpus["dicom-gap"] = (folder / "dicom-gap", r"gap or non-uniform slice spacing: 4.00 mm")
    write_series(folder / "dicom-interleaved", _tiny_ct(1), prefix="a")
    write_series(folder / "dicom-interleaved", _tiny_ct(2), prefix="b", origin=(-10.0, -20.0, 31.0))
    corpus["dicom-interleaved"] = (folder / "dicom-interleaved", r"holds 2 series of 6 slices each")
    (folder / "dicom-sr").mkdir()
    write_sr(folder / "dicom-sr" / "report.dcm")
    corpus["dicom-sr"] = (folder / "dicom-sr", r"no DICOM image series: found only non-image objects "
                                               r"\(Comprehensive SR Storage x1\)")
    write_series(folder / "dicom-orientation", _tiny_ct(3))
    tilted = folder / "dicom-orientation" / "slice003.dcm"
    ds = pydicom.dcmread(tilted)
    ds.ImageOrientationPatient = [0.0, 1.0, 0.0, 0.0, 0.0, -1.0]
    ds.save_as(tilted, enforce_file_format=True)
    corpus["dicom-orientation"] = (folder / "dicom-orientation", r"series mixes slice sizes or orientations")
    odd = folder / ("Ünïcödé 患者 " + "x" * 180 + ".nii.gz")
    odd.write_bytes(good.read_bytes()[:300])
    corpus["odd-name"] = (odd, r"truncated|not a readable")
    good.unlink()
    return corpus


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, tuple[Path, str]]:
    return write_corpus(tmp_path_factory.mktemp("corpus") / "in")


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("model"), members=1)


def _listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


def _refused(result, path: Path, pattern: str) -> str:
    assert result.exit_code == 2, (result.exit_code, result.output)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error: {path}: "), lines[0]
    assert re.search(pattern, lines[0]), lines[0]
    return lines[0]


NAMES = ["truncated", "magic", "empty", "fourd", "naninf", "zero-axis", "huge", "dicom-gap", "dicom-interleaved",
         "dicom-sr", "dicom-orientation", "odd-name"]


@pytest.mark.parametrize("name", NAMES)
def test_info_refuses_with_one_line_naming_the_file(corpus, name):
    path, pattern = corpus[name]
    before = _listing(path.parent)
    _refused(CliRunner().invoke(app, ["info", str(path)]), path, pattern)
    assert _listing(path.parent) == before


@pytest.mark.parametrize("name", NAMES)
def test_segment_refuses_and_leaves_no_output(corpus, model, tmp_path, name):
    path, pattern = corpus[name]
    out = tmp_path / "out"
    _refused(CliRunner().invoke(app, ["segment", str(path), "--out", str(out), "--model", str(model)]), path, pattern)
    assert _listing(out) == []  # no bundle, no hidden temporary folder


def test_segment_refuses_a_case_over_the_memory_budget_with_the_figure(model, tmp_path):
    source = write_phantom(tmp_path / "big.nii.gz", seed=1)
    config = tmp_path / "budget.yaml"
    config.write_text("memory_budget_mib: 0.5\n")
    result = CliRunner().invoke(app, ["segment", str(source), "--out", str(tmp_path / "out"), "--model", str(model),
                                      "--config", str(config)])
    line = _refused(result, source, r"predicted peak memory [\d,]+ MiB exceeds the budget of 0 MiB")
    assert "memory_budget_mib" in line
    assert _listing(tmp_path / "out") == []


def test_export_refuses_a_label_map_off_the_image_grid(tmp_path):
    image = write_phantom(tmp_path / "image.nii.gz", seed=3)
    affine = nib.load(image).affine.copy()
    affine[:3, :3] *= 1.5  # other spacing, same voxel count
    label = tmp_path / "label.nii.gz"
    nib.save(nib.Nifti1Image(np.ones(nib.load(image).shape, np.uint8), affine), label)
    out = tmp_path / "bundle"
    result = CliRunner().invoke(app, ["export", str(label), "--image", str(image), "--out", str(out)])
    _refused(result, label, r"not on the image's voxel grid")
    assert _listing(tmp_path) == ["image.nii.gz", "label.nii.gz"]  # no bundle, no .bundle.tmp-*


def test_hostile_names_and_patient_id_stay_inside_the_output_folder(model, tmp_path):
    """A good DICOM series whose PatientID is '../../etc/passwd', under a non-ASCII folder name with '..'."""
    folder = tmp_path / "in" / "Ünïcödé ..患者"
    write_series(folder, _tiny_ct(4))
    _tag_patient(folder, **PATIENT)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["segment", str(folder), "--out", str(out), "--model", str(model)])
    assert result.exit_code == 0, result.output
    assert [p.name for p in out.iterdir()] == ["Unicode"]
    assert all(out in p.resolve().parents for p in out.rglob("*"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "out"]


def _manifest(path: Path, rows: list[tuple[str, Path]]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["case_id", "image"])
        writer.writerows([case_id, str(image)] for case_id, image in rows)
    return path


@pytest.fixture(scope="module")
def batch(corpus, model, tmp_path_factory, prefect_env):
    """One batch over the corpus entries the Flows tests do not run, beside hostile-named good cases."""
    root = tmp_path_factory.mktemp("hostile-batch")
    good_dicom = root / "dicom-good"
    write_series(good_dicom, _tiny_ct(5))
    _tag_patient(good_dicom, **PATIENT)
    failing = ["zero-axis", "huge", "dicom-interleaved", "dicom-sr", "dicom-orientation", "odd-name"]
    rows = [(name, corpus[name][0]) for name in failing]
    rows += [("../../escape", good_dicom), ("Ünïcödé 患者", write_phantom(root / "u.nii.gz", 11)),
             ("y" * 300, write_phantom(root / "long.nii.gz", 12))]
    manifest = _manifest(root / "cases.csv", rows)
    out = root / "out"
    env = {**prefect_env, "PREFECT_LOGGING_LEVEL": "INFO"}
    request = {"source": str(manifest), "out": str(out), "model": str(model),
               "config": {"threads": 1, "retries": 0}, "print_json": True}
    done = run(["-m", "deconvseg.flows.serve"], env, input=json.dumps(request))
    summary = json.loads((out / "batch.json").read_text())
    return {"done": done, "out": out, "root": root, "summary": summary, "corpus": corpus, "failing": failing}


def test_batch_records_each_failure_with_its_reason_and_finishes_the_others(batch):
    from deconvseg.flows.dashboard import table_rows

    assert batch["done"].returncode == 1, batch["done"].stderr[-3000:]
    rows = {row["case"]: row for row in batch["summary"]["rows"]}
    expected_ids = {"escape", "Unicode", "y" * 91 + "-"}
    segmented = {case for case, row in rows.items() if row["status"] == "segmented"}
    assert {case[:92] if case.startswith("y") else case for case in segmented} == expected_ids
    for name in batch["failing"]:
        path, pattern = batch["corpus"][name]
        row = rows[name]
        assert row["status"] == "failed" and row["bundle"] == "", row
        assert row["reason"].startswith(str(path)) and re.search(pattern, row["reason"]), row["reason"]
        assert f"failed: {name}: {row['reason']}" in batch["done"].stderr
    table = {row["case"]: row for row in table_rows(batch["summary"]["rows"])}
    assert all(table[name]["reason"] == rows[name]["reason"] for name in batch["failing"])


def test_batch_leaves_only_finished_bundles_under_safe_names(batch):
    out = batch["out"]
    names = sorted(p.name for p in out.iterdir() if p.name != ".deconvseg-batch.lock")
    assert names[:3] == ["Unicode", "batch.json", "escape"] and len(names) == 4 and len(names[3]) <= 100
    assert all(re.fullmatch(r"[A-Za-z0-9._-]+", p.name) for p in out.rglob("*"))
    assert all(out in p.resolve().parents for p in out.rglob("*"))
    assert not list(out.glob(".*.tmp-*")) and not list(out.glob(".*.old-*"))
    assert sorted(p.name for p in batch["root"].iterdir()) == ["cases.csv", "dicom-good", "long.nii.gz", "out",
                                                               "u.nii.gz"]


def test_batch_logs_and_dashboard_carry_no_patient_name_or_birth_date(batch):
    texts = [batch["done"].stdout, batch["done"].stderr, (batch["out"] / "batch.json").read_text()]
    texts += [p.read_text(errors="replace") for p in (batch["out"] / "escape").rglob("*")
              if p.is_file() and p.suffix in (".json", ".csv", ".html")]
    for text in texts:
        for secret in ("DOE", "JANE", "19450317"):
            assert secret not in text


def test_segment_stops_a_case_over_its_time_limit(model, tmp_path):
    source = write_phantom(tmp_path / "slow.nii.gz", seed=2)
    result = CliRunner().invoke(app, ["segment", str(source), "--out", str(tmp_path / "out"), "--model", str(model),
                                      "--timeout", "0.001"])
    _refused(result, source, r"exceeded the time limit of 0.001 s; raise the time limit")
    assert _listing(tmp_path / "out") == []
