"""``--deidentify``, ``--channel`` and the output check on ``segment`` and ``batch``, through the one case API
(so the PACS flow gets them too): the same behaviour as ``export --deidentify`` (issue 17)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from typer.testing import CliRunner

from deconvseg.flows.cli import app
from deconvseg.pipeline.sanitize import identifying_values
from flows_support import TINY_SHAPE, TINY_SPACING, run, write_phantom, write_tiny_model
from tests.test_security import SECRETS, _grep


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return write_tiny_model(tmp_path_factory.mktemp("model"), members=1)


def _patient_series(folder: Path) -> Path:
    """A tiny phantom CT as a DICOM series carrying a patient's identity (the tiny model labels it)."""
    from deconvseg.pipeline.export.dicom_series import series_from_volume, write_series
    from deconvseg.pipeline.phantoms import make_phantom

    image, _ = make_phantom("CT", shape=TINY_SHAPE, spacing=TINY_SPACING, seed=1)
    write_series(series_from_volume(image), folder)
    for path in folder.iterdir():
        ds = pydicom.dcmread(path)
        ds.update(SECRETS)
        ds.save_as(path, enforce_file_format=True)
    return folder


def _segment(inputs: list[Path], out: Path, model: Path, *extra: str):
    return CliRunner().invoke(app, ["segment", *map(str, inputs), "--out", str(out), "--model", str(model),
                                    "--threads", "1", *extra])


def _one_line(result, pattern: str) -> None:
    assert result.exit_code == 2, result.output
    assert len(result.stderr.splitlines()) == 1 and re.search(pattern, result.stderr), result.stderr


def test_segment_deidentifies_seg_rtstruct_and_manifest(tmp_path, model):
    series = _patient_series(tmp_path / "series")
    secrets = identifying_values(pydicom.dcmread(sorted(series.iterdir())[0]))
    for flag in ([], ["--deidentify"]):
        result = _segment([series], tmp_path / ("deid" if flag else "plain"), model, *flag)
        assert result.exit_code == 0, result.output
    assert "DOE^JANE" in " ".join(_grep(tmp_path / "plain", secrets))  # the check can see a leak
    assert _grep(tmp_path / "deid", secrets + [str(series)]) == []
    for name in ("seg.dcm", "rtstruct.dcm"):
        ds = pydicom.dcmread(tmp_path / "deid" / "series" / name)
        assert ds.PatientName == "" and ds.PatientID == "series" and ds.PatientIdentityRemoved == "YES"
    manifest = json.loads((tmp_path / "deid" / "series" / "manifest.json").read_text())
    assert manifest["deidentified"] is True and manifest["config"]["deidentify"] is True


def test_segment_channel_picks_one_of_a_4d_input(tmp_path, model):
    phantom = nib.load(write_phantom(tmp_path / "p.nii.gz", 3))
    data = np.asarray(phantom.dataobj)
    nib.save(nib.Nifti1Image(np.stack([np.zeros_like(data), data], axis=-1), phantom.affine), tmp_path / "fourd.nii.gz")
    _one_line(_segment([tmp_path / "fourd.nii.gz"], tmp_path / "out", model),
              r"fourd.nii.gz: image has 2 channels .*; choose one with --channel N")
    assert not (tmp_path / "out").exists()
    assert _segment([tmp_path / "fourd.nii.gz"], tmp_path / "out", model, "--channel", "1").exit_code == 0
    assert _segment([tmp_path / "p.nii.gz"], tmp_path / "ref", model).exit_code == 0
    labels = [np.asarray(nib.load(p / "labels.nii.gz").dataobj) for p in (tmp_path / "out" / "fourd", tmp_path / "ref" / "p")]
    assert labels[0].shape == TINY_SHAPE[::-1] and np.array_equal(*labels)


@pytest.mark.parametrize("command", ["segment", "batch"])
def test_an_output_that_is_a_file_or_a_users_folder_is_refused_before_any_work(tmp_path, model, command):
    source = tmp_path / "in"
    write_phantom(source / "p1.nii.gz", 1)
    (tmp_path / "report.pdf").write_bytes(b"%PDF precious")
    (tmp_path / "out" / "p1").mkdir(parents=True)
    (tmp_path / "out" / "p1" / "notes.txt").write_text("mine")
    target = [str(source / "p1.nii.gz")] if command == "segment" else [str(source)]
    for out, pattern in [(tmp_path / "report.pdf", r"report.pdf: is a file, not a folder"),
                         (tmp_path / "out", r"out/p1: exists and is not a deconvseg bundle")]:
        result = CliRunner().invoke(app, [command, *target, "--out", str(out), "--model", str(model)])
        _one_line(result, pattern)
    assert (tmp_path / "report.pdf").read_bytes() == b"%PDF precious"
    assert sorted(p.name for p in (tmp_path / "out").rglob("*")) == ["notes.txt", "p1"]


def test_batch_deidentifies_through_the_case_api(tmp_path, model, prefect_env):
    series = _patient_series(tmp_path / "in" / "series")
    secrets = identifying_values(pydicom.dcmread(sorted(series.iterdir())[0]))
    done = run(["-c", "from deconvseg.flows.cli import app; app()", "batch", str(tmp_path / "in"), "--out",
                str(tmp_path / "out"), "--model", str(model), "--deidentify"], prefect_env)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out" / "series" / "seg.dcm").is_file()
    assert _grep(tmp_path / "out" / "series", secrets + [str(series)]) == []


def test_a_second_batch_on_the_same_output_is_one_line_before_anything_starts(tmp_path, model):
    from deconvseg.flows.outputs import batch_lock

    write_phantom(tmp_path / "in" / "p1.nii.gz", 1)
    with batch_lock(tmp_path / "out"):  # the first batch, still running
        result = CliRunner().invoke(app, ["batch", str(tmp_path / "in"), "--out", str(tmp_path / "out"),
                                          "--model", str(model)])
    _one_line(result, r"out: another batch is writing into this folder")
    assert [p.name for p in (tmp_path / "out").iterdir()] == [".deconvseg-batch.lock"]
