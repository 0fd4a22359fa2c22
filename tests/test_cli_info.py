"""``deconvseg info PATH --json``: the keys the checks read, and one-line errors with a non-zero exit."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from deconvseg.flows.cli import app
from deconvseg.pipeline.io.volumes import write_volume
from deconvseg.pipeline.phantoms import make_phantom
from tests.conftest import shared_path

DECONVSEG = Path(sys.executable).parent / "deconvseg"


def _info(*args: str) -> dict:
    result = CliRunner().invoke(app, ["info", *args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_info_json_on_a_written_volume(tmp_path):
    image, _ = make_phantom("CT", shape=(8, 16, 12), spacing=(2.0, 3.0, 4.0))
    data = _info(str(write_volume(image, tmp_path / "ct.nii.gz")))
    assert {"size", "spacing", "origin", "direction", "modality", "kind"} <= set(data)
    assert data["size"] == [12, 16, 8] and data["spacing"] == pytest.approx([2.0, 3.0, 4.0])
    assert data["origin"] == pytest.approx(list(image.origin), abs=1e-4)
    assert data["direction"] == pytest.approx(np.eye(3).ravel().tolist())
    assert data["modality"] == "CT" and data["modality_source"] == "statistics" and data["kind"] == "image"


def test_info_json_on_the_dicom_series_and_its_flipped_reference():
    series = _info(str(shared_path("totalsegmentator_example", "example_ct_dicom")))
    assert series["size"] == [512, 512, 20] and series["modality"] == "CT" and series["modality_source"] == "tag"
    assert series["spacing"] == pytest.approx([0.9765625, 0.9765625, 2.0])
    assert series["files"] == 20
    seg = _info(str(shared_path("totalsegmentator_example", "example_seg_dicom.nii.gz")), "--kind", "label")
    assert seg["kind"] == "label" and seg["modality"] is None
    assert seg["direction"][4] == pytest.approx(-1.0)  # stored with y flipped (LPS: direction[1][1] = -1)


def test_info_on_bad_input_prints_one_line_to_stderr_and_exits_non_zero(tmp_path):
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"not an image")
    result = subprocess.run([str(DECONVSEG), "info", str(bad), "--json"], capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(bad) in lines[0] and "not a readable" in lines[0]
