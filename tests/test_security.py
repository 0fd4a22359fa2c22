"""Security of issue 9: no pickle is ever loaded, names are sanitised before they become paths, patient
names and birth dates stay out of logs and dashboard rows, exports can be de-identified, servers bind
to loopback."""

from __future__ import annotations

import json
import logging
import os
import pickle
import re
from pathlib import Path

import numpy as np
import pydicom
import pytest
from typer.testing import CliRunner

from deconvseg.flows.cli import app
from flows_support import REPO, write_tiny_model
from deconvseg.pipeline.errors import InputError
from deconvseg.pipeline.sanitize import deidentify_dataset, deidentify_metadata, identifying_values, safe_component, safe_join
from tests.test_io_dicom import write_series

SECRETS = {"PatientName": "DOE^JANE", "PatientBirthDate": "19450317", "PatientID": "MRN-4711",
           "InstitutionName": "St Elsewhere", "ReferringPhysicianName": "HOUSE^GREGORY", "OtherPatientIDs": "OLD-99"}
SOURCES = [REPO / d for d in ("pipeline", "flows", "models", "benchmarks")]


class _Payload:
    """Unpickling this object would create ``marker`` (what a malicious checkpoint does)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.makedirs, (str(self.marker),))


def test_a_pickled_checkpoint_is_refused_and_its_payload_never_runs(tmp_path):
    from deconvseg.pipeline.checkpoints import load_checkpoint
    from deconvseg.pipeline.ensemble import load_ensemble

    folder = write_tiny_model(tmp_path / "ensemble", members=1) / "member0"
    meta = json.loads((folder / "model.json").read_text())
    meta.pop("weights_sha256")  # so the refusal comes from the format, not from the hash
    (folder / "model.json").write_text(json.dumps(meta))
    marker = tmp_path / "pwned"
    (folder / "weights.safetensors").write_bytes(pickle.dumps(_Payload(marker)))
    for load in (load_checkpoint, load_ensemble):
        with pytest.raises(InputError, match=r"weights.safetensors: not a readable safetensors file"):
            load(folder)
    (folder / "weights.safetensors").unlink()
    (folder / "model.pt").write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(InputError, match=r"missing weights file; found \['model.pt'\], which are pickles"):
        load_checkpoint(folder)
    assert not marker.exists()


def test_no_code_path_can_unpickle():
    unsafe = re.compile(r"torch\.load\(|pickle\.loads?\(|joblib\.load|dill\.|allow_pickle=True|yaml\.load\(|"
                        r"yaml\.unsafe_load|(?<![.\w])eval\(|(?<![.\w])exec\(|weights_only=False")
    hits = [f"{path.relative_to(REPO)}:{n}" for root in SOURCES for path in root.rglob("*.py")
            for n, line in enumerate(path.read_text().splitlines(), 1) if unsafe.search(line)]
    assert hits == []


@pytest.mark.parametrize("name", ["../../etc/passwd", "..", ".", "", "/abs/path", "a\\..\\b", "CON", ".hidden",
                                  "Ünïcödé ..患者", "患者", "-rf", "x" * 300, "a\x00b", "name\nwith newline"])
def test_safe_component_never_escapes_and_stays_short(tmp_path, name):
    cleaned = safe_component(name)
    assert re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9._-]*", cleaned) and len(cleaned) <= 100 and ".." not in cleaned
    assert cleaned.upper() not in {"CON", "NUL", "AUX", "PRN"}
    assert safe_join(tmp_path, cleaned).parent == tmp_path.resolve()


def test_distinct_long_or_unprintable_names_stay_distinct():
    assert safe_component("x" * 200 + "a") != safe_component("x" * 200 + "b")
    assert safe_component("患者") != safe_component("病人")
    assert safe_component("Müller^Jörg") == "Muller_Jorg" and safe_component("p001") == "p001"


def test_safe_join_refuses_paths_that_leave_the_root(tmp_path):
    (tmp_path / "root").mkdir()
    os.symlink(tmp_path, tmp_path / "root" / "link")
    for parts in (["..", "x"], ["/etc"], ["link", "x"]):
        with pytest.raises(InputError, match="path leaves the output folder"):
            safe_join(tmp_path / "root", *parts)
    assert safe_join(tmp_path / "root", "a", "b") == (tmp_path / "root" / "a" / "b").resolve()


def _patient_series(folder: Path) -> Path:
    write_series(folder, np.random.default_rng(0).integers(-100, 200, size=(6, 16, 16)).astype(np.int16))
    for path in folder.iterdir():
        ds = pydicom.dcmread(path)
        ds.update(SECRETS)
        ds.add_new(0x00110010, "LO", "ACME private")  # a private creator tag
        ds.save_as(path, enforce_file_format=True)
    return folder


def test_deidentify_dataset_blanks_identity_keeps_uids_and_never_mutates(tmp_path):
    folder = _patient_series(tmp_path / "s")
    original = pydicom.dcmread(sorted(folder.iterdir())[0])
    clean = deidentify_dataset(original, pseudonym="case-7")
    assert original.PatientName == "DOE^JANE" and identifying_values(clean) == ["case-7"]
    assert clean.PatientName == "" and clean.PatientBirthDate == "" and clean.PatientID == "case-7"
    assert "InstitutionName" not in clean and "OtherPatientIDs" not in clean and (0x0011, 0x0010) not in clean
    assert clean.PatientIdentityRemoved == "YES" and clean.SOPInstanceUID == original.SOPInstanceUID
    assert deidentify_metadata({"patient_id": "MRN-4711", "modality": "CT"}) == {"modality": "CT"}


def _grep(folder: Path, secrets: list[str]) -> list[str]:
    return [f"{p.relative_to(folder)}: {s}" for p in folder.rglob("*") if p.is_file() for s in secrets
            if s.encode() in p.read_bytes()]


def test_deidentified_export_carries_no_patient_identity(tmp_path):
    from deconvseg.pipeline.io.volumes import read_volume, write_volume

    series = _patient_series(tmp_path / "series")
    image = read_volume(series)
    mask = (image.array > 50).astype(np.uint8)
    write_volume(image.with_array(mask, kind="label"), tmp_path / "labels.nii.gz")
    secrets = identifying_values(pydicom.dcmread(sorted(series.iterdir())[0]))
    assert {"DOE^JANE", "DOE", "JANE", "19450317", "MRN-4711", "St Elsewhere"} <= set(secrets)
    runs = {}
    for flag in ([], ["--deidentify"]):
        out = tmp_path / ("deid" if flag else "plain")
        result = CliRunner().invoke(app, ["export", str(tmp_path / "labels.nii.gz"), "--image", str(series),
                                          "--out", str(out), *flag])
        assert result.exit_code == 0, result.output
        runs["deid" if flag else "plain"] = out
    assert "DOE^JANE" in " ".join(_grep(runs["plain"], secrets))  # the check can see a leak
    assert _grep(runs["deid"], secrets + [str(series)]) == []
    for name in ("seg.dcm", "rtstruct.dcm"):
        ds = pydicom.dcmread(runs["deid"] / name)
        assert ds.PatientName == "" and ds.PatientID == "deid" and ds.PatientIdentityRemoved == "YES"
        assert ds.FrameOfReferenceUID == pydicom.dcmread(sorted(series.iterdir())[0]).FrameOfReferenceUID
    manifest = json.loads((runs["deid"] / "manifest.json").read_text())
    assert manifest["deidentified"] is True and all("path" not in f for f in manifest["inputs"]["image"])


def test_logs_and_dashboard_rows_carry_case_ids_not_patient_names(tmp_path, caplog):
    from deconvseg.flows.dashboard import row_from_bundle

    series = _patient_series(tmp_path / "patient-folder")
    model = write_tiny_model(tmp_path / "model", members=1)
    with caplog.at_level(logging.DEBUG):
        result = CliRunner().invoke(app, ["segment", str(series), "--out", str(tmp_path / "out"), "--model",
                                          str(model), "--json"])
    assert result.exit_code == 0, result.output
    bundle = tmp_path / "out" / "patient-folder"
    row = json.dumps(row_from_bundle("patient-folder", bundle))
    texts = [caplog.text, result.output, result.stderr, row,
             *(p.read_text() for p in bundle.iterdir() if p.suffix in (".json", ".csv", ".html"))]
    assert "patient-folder" in row
    for text in texts:
        assert not [s for s in ("DOE", "JANE", "19450317", "St Elsewhere") if s in text]


def test_project_servers_listen_on_loopback_only():
    """Every server command the code builds names --host 127.0.0.1; nothing binds all interfaces."""
    commands, wildcard = [], []
    for root in SOURCES:
        for path in root.rglob("*.py"):
            text = path.read_text()
            commands += re.findall(r'"--host",\s*"([^"]+)"', text)
            wildcard += [str(path.relative_to(REPO))] if re.search(r"0\.0\.0\.0|host=\"\"|host=''", text) else []
    assert commands and set(commands) == {"127.0.0.1"} and wildcard == []


@pytest.mark.slow
def test_local_prefect_server_socket_is_bound_to_loopback(tmp_path):
    import psutil

    from deconvseg.flows.prefect_env import local_server

    with local_server(tmp_path / "home") as api_url:
        port = int(api_url.split(":")[2].split("/")[0])
        listening = [c for c in psutil.net_connections("tcp") if c.status == "LISTEN" and c.laddr.port == port]
    assert listening and {c.laddr.ip for c in listening} == {"127.0.0.1"}
