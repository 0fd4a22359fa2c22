"""Outputs that are files, folders that are not ours, unwritable or over-long paths, label values past
16 bits, text from inputs, stray library output and configs: each refused in one line, nothing created
or lost (issue 17)."""

from __future__ import annotations

import csv
import json
import re
import resource
import signal
import struct
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from deconvseg.flows.cli import app
from flows_support import REPO

CLI = [sys.executable, "-c", "from deconvseg.flows.cli import app; app()"]


def _listing(folder: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else None for p in sorted(folder.rglob("*"))}


@pytest.fixture()
def case(tmp_path):
    """A small image and a label map holding 3 and 70000."""
    image = np.random.default_rng(0).normal(size=(8, 12, 10)).astype(np.float32)
    nib.save(nib.Nifti1Image(image, np.eye(4)), tmp_path / "image.nii.gz")
    labels = np.zeros((8, 12, 10), np.uint32)
    labels[2:5, 3:6, 4:7], labels[5:7, 1:3, 1:3] = 70000, 3
    nib.save(nib.Nifti1Image(labels, np.eye(4)), tmp_path / "labels.nii.gz")
    return tmp_path


def _export(case: Path, out: str | Path, *extra: str):
    return CliRunner().invoke(app, ["export", str(case / "labels.nii.gz"), "--image", str(case / "image.nii.gz"),
                                    "--out", str(out), *extra])


def _refused(result, pattern: str) -> str:
    assert result.exit_code == 2, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert re.search(pattern, lines[0]), lines[0]
    return lines[0]


def test_an_existing_file_as_out_is_refused_and_kept(case):
    (case / "notes.txt").write_text("precious")
    before = _listing(case)
    _refused(_export(case, case / "notes.txt"), r"notes.txt: is a file, not a bundle folder")
    _refused(_export(case, case / "notes.txt" / "sub"), r"notes.txt: is a file, not a folder")
    assert _listing(case) == before


def test_a_folder_that_is_not_a_bundle_is_never_replaced(case):
    (case / "mine").mkdir()
    (case / "mine" / "thesis.tex").write_text("years of work")
    before = _listing(case)
    _refused(_export(case, case / "mine"), r"mine: exists and is not a deconvseg bundle")
    assert _listing(case) == before


def test_a_bundle_written_earlier_is_replaced(case):
    assert _export(case, case / "bundle").exit_code == 0
    assert _export(case, case / "bundle").exit_code == 0


def test_an_unwritable_folder_and_an_overlong_name_are_one_line(case):
    before = _listing(case)
    _refused(_export(case, "/sys/deconvseg-out"), r"^error: /sys: folder is not writable")
    _refused(_export(case, case / ("x" * 300)), r"name of 300 bytes is longer than the file system allows")
    assert _listing(case) == before


def test_label_values_past_16_bits_survive_every_writer(case):
    assert _export(case, case / "bundle").exit_code == 0
    written = nib.load(case / "bundle" / "labels.nii.gz")
    assert written.get_data_dtype() == np.uint32
    assert np.unique(np.asarray(written.dataobj)).tolist() == [0, 3, 70000]
    assert [row["value"] for row in json.loads((case / "bundle" / "stats.json").read_text())] == [3, 70000]
    import nrrd

    data, header = nrrd.read(str(case / "bundle" / "labels.seg.nrrd"), index_order="C")
    assert header["type"] == "uint32" and np.unique(data).tolist() == [0, 3, 70000]


def test_label_values_near_2_to_the_31_do_not_allocate_by_value(case):
    labels = np.zeros((8, 12, 10), np.uint32)
    labels[2:5, 3:6, 4:7] = 2**31 + 5
    nib.save(nib.Nifti1Image(labels, np.eye(4)), case / "labels.nii.gz")
    result = subprocess.run([*CLI, "export", str(case / "labels.nii.gz"), "--image", str(case / "image.nii.gz"),
                             "--out", str(case / "bundle")], cwd=REPO, capture_output=True, text=True, timeout=120,
                            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30)))  # no 16 GiB table
    assert result.returncode == 0, result.stderr
    assert int(np.asarray(nib.load(case / "bundle" / "labels.nii.gz").dataobj).max()) == 2**31 + 5


def test_label_values_past_uint32_are_refused_before_anything_is_written(case):
    labels = np.zeros((8, 12, 10), np.uint64)
    labels[1, 1, 1] = 2**40
    nib.save(nib.Nifti1Image(labels, np.eye(4), dtype=np.uint64), case / "labels.nii.gz")
    before = _listing(case)
    _refused(_export(case, case / "bundle"), r"label value 1099511627776 is above the largest supported label")
    assert _listing(case) == before


def test_label_names_are_made_safe_for_csv_html_and_terminal(case):
    names = {"3": "=HYPERLINK(\"http://evil\")", "70000": "<script>alert(1)</script>\x1b[31m"}
    (case / "names.json").write_text(json.dumps(names))
    assert _export(case, case / "bundle", "--labels", str(case / "names.json")).exit_code == 0
    with open(case / "bundle" / "stats.csv", newline="") as handle:
        cells = [row["name"] for row in csv.DictReader(handle)]
    assert cells[0].startswith("'=") and not any(c.startswith(("=", "+", "-", "@")) for c in cells)
    report = (case / "bundle" / "report.html").read_text()
    assert "<script>alert" not in report and "&lt;script&gt;" in report


def test_a_refusal_is_exactly_one_line_even_when_a_c_library_prints(tmp_path):
    base = tmp_path / "base.nii"
    nib.save(nib.Nifti1Image(np.zeros((4, 5, 6), np.float32), np.eye(4)), base)
    raw = bytearray(base.read_bytes())
    struct.pack_into("<h", raw, 70, 1234)  # an unknown datatype: ITK's niftilib prints "** ERROR" itself
    (tmp_path / "dtype.nii").write_bytes(bytes(raw))
    result = subprocess.run([*CLI, "info", str(tmp_path / "dtype.nii")], cwd=REPO, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [f"error: {tmp_path / 'dtype.nii'}: not a readable NIfTI/NRRD/MHA image "
                                          "(wrong format, bad header or truncated); re-export the file as .nii.gz, "
                                          ".nrrd or .mha"]


def test_control_characters_from_a_file_name_are_escaped_on_the_terminal(tmp_path):
    evil = tmp_path / "scan\x1b[2J\r.nii"
    evil.write_bytes(b"not an image" * 40)
    result = CliRunner().invoke(app, ["info", str(evil)])
    line = _refused(result, r"scan\\x1b\[2J\\r\.nii: not a readable")
    assert "\x1b" not in line and "\r" not in line


@pytest.mark.parametrize("text, pattern", [
    ("inference:\n  threads: 1\n  bogus: 2\n", r"key 'inference.bogus': Extra inputs are not permitted"),
    ("a: &a [1, 2]\nb: [*a, *a]\n", r"aliases \(\*name\) are not allowed in a config"),
])
def test_batch_configs_are_validated_completely_before_anything_starts(tmp_path, text, pattern):
    (tmp_path / "in").mkdir()
    nib.save(nib.Nifti1Image(np.zeros((4, 5, 6), np.float32), np.eye(4)), tmp_path / "in" / "a.nii.gz")
    (tmp_path / "batch.yaml").write_text(text)
    result = CliRunner().invoke(app, ["batch", str(tmp_path / "in"), "--out", str(tmp_path / "out"),
                                      "--config", str(tmp_path / "batch.yaml")])
    _refused(result, pattern)
    assert not (tmp_path / "out").exists()


def test_a_full_disk_is_one_line_and_leaves_nothing_half_written(case):
    """The file-size limit stands in for a full disk: the write fails half-way with an OSError."""
    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a failing write, not a killed process
        resource.setrlimit(resource.RLIMIT_FSIZE, (3000, 3000))

    before = _listing(case)
    result = subprocess.run([*CLI, "export", str(case / "labels.nii.gz"), "--image", str(case / "image.nii.gz"),
                             "--out", str(case / "bundle")], cwd=REPO, capture_output=True, text=True, timeout=120,
                            preexec_fn=limit)
    assert result.returncode == 2
    assert result.stderr.splitlines() == ["error: while writing: file too large; the file is larger than this "
                                          "system allows (ulimit -f): raise the limit or write elsewhere"]
    assert _listing(case) == before  # no bundle, no temporary folder


def test_label_values_past_16_bits_reach_the_seg_and_rtstruct(tmp_path):
    import pydicom

    from deconvseg.pipeline.io.volumes import read_volume, write_volume
    from tests.test_io_dicom import write_series

    write_series(tmp_path / "series", np.random.default_rng(0).integers(-100, 200, size=(6, 16, 16)).astype(np.int16))
    image = read_volume(tmp_path / "series")
    labels = np.zeros(image.shape, np.uint32)
    labels[1:5, 3:12, 3:12], labels[2:4, 5:9, 5:9] = 70000, 3
    write_volume(image.with_array(labels, kind="label"), tmp_path / "labels.nii.gz")
    result = CliRunner().invoke(app, ["export", str(tmp_path / "labels.nii.gz"), "--image", str(tmp_path / "series"),
                                      "--out", str(tmp_path / "bundle")])
    assert result.exit_code == 0, result.output
    seg = pydicom.dcmread(tmp_path / "bundle" / "seg.dcm")
    assert sorted(s.TrackingID.split(":")[0] for s in seg.SegmentSequence) == ["3", "70000"]
    rtstruct = pydicom.dcmread(tmp_path / "bundle" / "rtstruct.dcm")
    assert len(rtstruct.StructureSetROISequence) == 2
