"""``deconvseg pacs`` against a real Orthanc (DICOMweb, authentication on): a CT series (the
TotalSegmentator example) and an MR series (made from an ACDC volume) in, SEG and RTSTRUCT out.

Tiny random-weight model for the CT (speed), the shipped ``acdc`` model for the MR.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pydicom
import pytest

from deconvseg.models import WEIGHTS_ROOT
from deconvseg.pipeline.pacs.naming import case_id
from deconvseg.pipeline.pacs.query import SeriesInfo
from tests.conftest import shared_path
from tests.export_cases import dciodvfy_errors, sample_by_world
from tests.flows_support import REPO, run, write_tiny_model
from tests.orthanc_support import PASSWORD, USER, start_orthanc, write_ct_series, write_mr_series

CLI = ["-c", "from deconvseg.flows.cli import app; app()", "pacs"]
PASSWORD_ENV = "DECONVSEG_TEST_PACS_PASSWORD"


@pytest.fixture(scope="module")
def prefect_server(prefect_env, tmp_path_factory):
    """One Prefect server for the module's runs (each CLI run would otherwise start its own)."""
    from deconvseg.flows.prefect_env import local_server

    home = tmp_path_factory.mktemp("prefect-server")
    with local_server(home) as api_url:
        yield {**prefect_env, "PREFECT_HOME": str(home), "PREFECT_API_URL": api_url}


@pytest.fixture(scope="module")
def pacs(tmp_path_factory):
    """An Orthanc holding one CT and one MR series; a tiny model for the CT."""
    root = tmp_path_factory.mktemp("pacs")
    ct_source = shared_path("totalsegmentator_example", "example_ct_dicom")
    mr_source = shared_path("acdc", "volumes", "patient002_frame01.h5")
    server = start_orthanc(root / "orthanc")
    try:
        ct, mr = write_ct_series(ct_source, root / "ct"), write_mr_series(mr_source, root / "mr")
        server.upload(ct + mr)
        yield SimpleNamespace(server=server, root=root, ct=ct, mr=mr, tiny=_tiny_ct_model(root / "tiny-ct"))
    finally:
        server.stop()


def _tiny_ct_model(folder: Path) -> Path:
    """The tests' tiny random model, each structure kept to its largest component: a few smooth
    blobs, so the CT's RTSTRUCT takes a fraction of a second rather than contouring speckle."""
    write_tiny_model(folder)
    steps = [{"step": "largest_component", "label": value} for value in (1, 2, 3, 4)]
    (folder / "ensemble.json").write_text(json.dumps({"name": "tiny-ct", "postprocess": {"steps": steps}}))
    return folder


def _series(path: Path) -> pydicom.Dataset:
    return pydicom.dcmread(path, stop_before_pixels=True)


def _pacs(server, out: Path, prefect_env: dict, *args: str, password: str = PASSWORD, timeout: float = 240):
    env = {**prefect_env, PASSWORD_ENV: password}
    return run([*CLI, "--url", server.dicomweb, "--out", str(out), "--user", USER, "--password-env", PASSWORD_ENV,
                "--since", "20260101", "--once", *args], env, timeout=timeout)


def _stored(server, modality: str) -> list[pydicom.Dataset]:
    found = server.find("Instance", {"Modality": modality})
    return [pydicom.dcmread(__import__("io").BytesIO(server.instance_file(item["ID"]))) for item in found]


def test_ct_and_mr_in_seg_and_rtstruct_out_rerun_stores_nothing(pacs, prefect_server, tmp_path):
    prefect_env = prefect_server
    ct, mr = _series(pacs.ct[0]), _series(pacs.mr[0])
    out = tmp_path / "out"
    first = _pacs(pacs.server, out, prefect_env, "--modality", "CT", "--model", str(pacs.tiny), "--json")
    assert first.returncode == 0, first.stderr[-3000:]
    assert PASSWORD not in first.stdout + first.stderr
    mr_run = _pacs(pacs.server, out, prefect_env, "--modality", "MR", "--model", str(WEIGHTS_ROOT / "acdc"),
                   "--viewer-url", "http://127.0.0.1:8080")
    assert mr_run.returncode == 0, mr_run.stderr[-3000:]

    segs, rts = _stored(pacs.server, "SEG"), _stored(pacs.server, "RTSTRUCT")
    assert len(segs) == 2 and len(rts) == 2
    for source, model in ((ct, "tiny-ct"), (mr, "acdc")):
        seg = next(s for s in segs if s.StudyInstanceUID == source.StudyInstanceUID)
        rt = next(r for r in rts if r.StudyInstanceUID == source.StudyInstanceUID)
        assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == source.SeriesInstanceUID
        referenced = rt.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0]
        assert referenced.RTReferencedSeriesSequence[0].SeriesInstanceUID == source.SeriesInstanceUID
        assert seg.SeriesDescription.startswith(f"deconvseg {model} ") and rt.SeriesDescription == seg.SeriesDescription

    for index, stored in enumerate(segs + rts):  # as stored (our series description), valid DICOM
        path = tmp_path / f"stored{index}.dcm"
        stored.save_as(path, enforce_file_format=True)
        assert dciodvfy_errors(path) == [], path

    # The SEG read back from Orthanc holds the bundle's labels, placed by world coordinates.
    import highdicom as hd

    from deconvseg.pipeline.io.volumes import read_volume
    from deconvseg.pipeline.labels import LabelTable

    info = SeriesInfo(ct.StudyInstanceUID, ct.SeriesInstanceUID, "CT", "20260105", "abdomen ct example", "2")
    bundle = out / case_id(info)
    seg = hd.seg.Segmentation.from_dataset(next(s for s in segs if s.StudyInstanceUID == ct.StudyInstanceUID))
    volume = seg.get_volume(combine_segments=True, relabel=False)
    table = LabelTable.read(bundle / "labels.json")
    by_number = {d.segment_number: table.names.index(d.segment_label) for d in seg.SegmentSequence}
    lut = np.zeros(max(by_number) + 1, dtype=np.int32)
    for number, index in by_number.items():
        lut[number] = table.values[index]
    labels = read_volume(bundle / "labels.nii.gz", kind="label")
    from_pacs = sample_by_world(lut[volume.array], volume.affine, labels, outside=0)
    assert labels.array.any() and np.array_equal(from_pacs, labels.array)

    # With --viewer-url the MR case opens in OHIF with our SEG; the manifest, the row and the builder agree.
    from deconvseg.pipeline.viewer import viewer_url

    [row] = json.loads((out / "batch.json").read_text())["rows"]
    mr_seg = next(s for s in segs if s.StudyInstanceUID == mr.StudyInstanceUID)
    manifest = json.loads((Path(row["bundle"]) / "manifest.json").read_text())
    expected = viewer_url("http://127.0.0.1:8080", mr.StudyInstanceUID, mr_seg.SeriesInstanceUID)
    assert manifest["viewer_url"] == row["link"] == expected

    again = _pacs(pacs.server, out, prefect_env, "--modality", "CT", "--model", str(pacs.tiny))
    assert again.returncode == 0, again.stderr[-3000:]
    assert "0 instances stored" in again.stdout
    # Without it the dashboard links each case to its study in Orthanc's UI.
    [row] = json.loads((out / "batch.json").read_text())["rows"]
    study_id = pacs.server.find("Study", {"StudyInstanceUID": ct.StudyInstanceUID})[0]["ID"]
    assert row["link"].endswith(f"/app/explorer.html#study?uuid={study_id}")
    assert len(_stored(pacs.server, "SEG")) == 2 and len(_stored(pacs.server, "RTSTRUCT")) == 2


def test_wrong_password_is_one_line(pacs, prefect_env, tmp_path):
    result = _pacs(pacs.server, tmp_path / "out", prefect_env, "--model", str(pacs.tiny), password="wrong", timeout=60)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "HTTP 401" in lines[0] and lines[0].startswith("error: "), result.stderr
    assert "wrong" not in result.stderr


def test_password_from_a_prefect_secret_block(prefect_server):
    """On the module's Prefect server (no start-up of its own)."""
    code = """
from prefect.blocks.system import Secret
from deconvseg.flows.pacs_settings import PacsAuth
from deconvseg.pipeline.errors import ConfigError
Secret(value="pw-from-block").save("deconvseg-test-pacs", overwrite=True)
credentials = PacsAuth(user="u", secret_block="deconvseg-test-pacs").credentials()
assert credentials.password == "pw-from-block" and "pw-from-block" not in repr(credentials)
try:
    PacsAuth(user="u", secret_block="no-such-block").credentials()
except ConfigError as err:
    print(err)
"""
    result = run(["-c", code], prefect_server, timeout=240)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Prefect Secret block 'no-such-block' not found" in result.stdout


def _reader(stream, lines: queue.Queue) -> None:
    for line in stream:
        lines.put(line)


def test_pacs_stopped_mid_run_fails_that_case_only(tmp_path, prefect_server):
    """Orthanc goes down right after the first series was retrieved: that case fails after its
    retries with the reason, stores nothing; Orthanc comes back and the second case finishes."""
    import subprocess
    import sys

    server = start_orthanc(tmp_path / "orthanc")
    try:
        first = write_mr_series(shared_path("acdc", "volumes", "patient003_frame01.h5"), tmp_path / "a", "20260103")
        second = write_mr_series(shared_path("acdc", "volumes", "patient004_frame01.h5"), tmp_path / "b", "20260104")
        server.upload(first + second)
        ds = _series(first[0])
        info = SeriesInfo(ds.StudyInstanceUID, ds.SeriesInstanceUID, "MR", "20260103", "cine sax acdc", "1")
        doomed, out = case_id(info), tmp_path / "out"
        config = tmp_path / "pacs.yaml"
        config.write_text("max_workers: 1\nretries: 2\nretry_delay_s: 1.0\nhttp_timeout_s: 5\n")
        env = {**__import__("os").environ, **prefect_server, PASSWORD_ENV: PASSWORD,
               "PYTHONPATH": str(REPO)}
        command = [sys.executable, *CLI, "--url", server.dicomweb, "--out", str(out), "--user", USER,
                   "--password-env", PASSWORD_ENV, "--model", str(WEIGHTS_ROOT / "acdc"), "--config", str(config),
                   "--once"]
        process = subprocess.Popen(command, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   text=True)
        lines: queue.Queue = queue.Queue()
        threading.Thread(target=_reader, args=(process.stdout, lines), daemon=True).start()
        output, stopped, restarted = [], False, False
        deadline = time.monotonic() + 240
        while process.poll() is None and time.monotonic() < deadline:
            if not stopped and (out / ".pacs-incoming" / doomed).is_dir():
                server.stop()  # by PID, right after the first series was retrieved
                stopped = True
            try:
                output.append(lines.get(timeout=0.05))
            except queue.Empty:
                continue
            if stopped and not restarted and f"pacs-{doomed}" in output[-1] and "Failed" in output[-1]:
                server.start()  # the first case gave up; the PACS is back for the second
                restarted = True
        process.wait(timeout=30)
        time.sleep(0.2)
        while not lines.empty():
            output.append(lines.get())
        text = "".join(output)
        assert stopped and restarted, text[-3000:]
        assert process.returncode == 1, text[-3000:]
        failed = [line for line in text.splitlines() if line.startswith(f"failed: {doomed}: ")]
        assert len(failed) == 1 and "cannot connect" in failed[0] and "gave up after 3 tries" in failed[0], text[-3000:]
        summary = json.loads((out / "batch.json").read_text())
        assert summary["counts"] == {"cases": 2, "segmented": 1, "cached": 0, "failed": 1}
        stored = server.find("Series", {"Modality": "SEG"}) + server.find("Series", {"Modality": "RTSTRUCT"})
        studies = {item["ParentStudy"] for item in stored}
        assert len(stored) == 2 and len(studies) == 1
        doomed_study = server.find("Study", {"StudyInstanceUID": ds.StudyInstanceUID})[0]["ID"]
        assert doomed_study not in studies  # nothing of the failed case half-stored
        assert not (out / ".pacs-incoming").exists()
    finally:
        server.stop()
