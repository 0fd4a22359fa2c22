"""Case discovery and the versions that key the batch cache (no Prefect needed)."""

from __future__ import annotations

import os

import pytest

from deconvseg.flows.inputs import cache_key, config_version, discover_cases
from deconvseg.pipeline.case import CaseInput
from deconvseg.pipeline.ensemble import model_version
from deconvseg.pipeline.files import path_digest
from deconvseg.pipeline.errors import InputError
from deconvseg.pipeline.sanitize import safe_component


def _dicom_folder(folder, n=2):
    folder.mkdir(parents=True)
    for i in range(n):
        (folder / f"IM{i}.dcm").write_bytes(b"\0" * 128 + b"DICM" + bytes([i]) * 16)
    return folder


def test_folder_discovery_finds_volumes_and_dicom_series(tmp_path):
    (tmp_path / "b.nii.gz").write_bytes(b"x")
    (tmp_path / "a.nrrd").write_bytes(b"y")
    (tmp_path / "notes.txt").write_text("not a scan")
    (tmp_path / ".hidden.nii.gz").write_bytes(b"z")
    _dicom_folder(tmp_path / "series one")
    (tmp_path / "empty").mkdir()
    cases = discover_cases(tmp_path)
    assert [c.case_id for c in cases] == ["a", "b", "series_one"]
    assert cases[2].path == (tmp_path / "series one").resolve()


def test_manifest_discovery_resolves_relative_paths(tmp_path):
    (tmp_path / "scans").mkdir()
    (tmp_path / "scans" / "x.nii").write_bytes(b"x")
    manifest = tmp_path / "m.csv"
    manifest.write_text("case_id,image,modality\n../evil/id,scans/x.nii,ct\n")
    [case] = discover_cases(manifest)
    assert case == CaseInput("evil_id", (tmp_path / "scans" / "x.nii").resolve(), "CT")
    assert CaseInput.from_json(case.to_json()) == case


@pytest.mark.parametrize("content, problem", [("image\nx.nii\n", "missing column"), (None, "no NIfTI")])
def test_bad_sources_are_one_line_errors(tmp_path, content, problem):
    source = tmp_path
    if content is not None:
        source = tmp_path / "m.csv"
        source.write_text(content)
    with pytest.raises(InputError, match=problem) as err:
        discover_cases(source)
    assert "\n" not in str(err.value)


def test_duplicate_case_ids_are_refused(tmp_path):
    (tmp_path / "a.nii").write_bytes(b"x")
    (tmp_path / "a.nii.gz").write_bytes(b"y")
    with pytest.raises(InputError, match="case id 'a'"):
        discover_cases(tmp_path)


def test_safe_case_id_never_escapes_the_output_folder():
    for name in ["../../etc", "a/b", "..", "", "Ünïcode name", "x" * 300]:
        cleaned = safe_component(name)
        assert cleaned and "/" not in cleaned and not cleaned.startswith(".") and len(cleaned) <= 100


def test_content_hash_follows_bytes_not_names_or_times(tmp_path):
    a = tmp_path / "a.nii"
    a.write_bytes(b"voxels")
    before = path_digest(a)
    os.utime(a, (1, 1))
    b = tmp_path / "b.nii"
    b.write_bytes(b"voxels")
    assert path_digest(a) == before == path_digest(b)
    a.write_bytes(b"voxelz")
    assert path_digest(a) != before
    series = _dicom_folder(tmp_path / "s")
    first = path_digest(series)
    (series / "IM1.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"changed")
    assert path_digest(series) != first


def test_model_and_config_versions(tmp_path):
    with pytest.raises(InputError, match="no model.json"):
        model_version(tmp_path)
    member = tmp_path / "m0"
    member.mkdir()
    (member / "model.json").write_text("{}")
    (member / "weights.safetensors").write_bytes(b"w1")
    (member / "notes.md").write_text("ignored")
    first = model_version(tmp_path)
    (member / "notes.md").write_text("still ignored")
    assert model_version(tmp_path) == first
    (member / "weights.safetensors").write_bytes(b"w2")
    assert model_version(tmp_path) != first
    assert config_version({"a": 1, "b": 2}) == config_version({"b": 2, "a": 1}) != config_version({"a": 2})
    versions = {"input": "i", "model": "m", "config": "c"}
    assert cache_key(versions) != cache_key({**versions, "input": "j"})
