"""``--model`` names resolve to the shipped models, paths only when they look like paths; a model folder
cannot make the pipeline open files outside itself (issue 17)."""

from __future__ import annotations

import json

import pytest

from deconvseg.models import WEIGHTS_ROOT
from deconvseg.pipeline.errors import InputError
from deconvseg.pipeline.model_paths import model_reference, resolve_model


def test_a_name_is_the_shipped_model_even_beside_a_folder_of_that_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "acdc").mkdir()  # a user's folder that happens to be called acdc
    assert resolve_model("acdc") == WEIGHTS_ROOT / "acdc"
    assert resolve_model("./acdc").resolve() == tmp_path / "acdc"


def test_the_readme_path_works_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_model("models/weights/acdc") == WEIGHTS_ROOT / "acdc"


@pytest.mark.parametrize("value, pattern", [
    ("acdcc", r"^acdcc: no shipped model of that name; choose one of \[.*'acdc'"),
    ("./nowhere", r"^nowhere: no such model folder"),
])
def test_unknown_models_are_one_line(tmp_path, monkeypatch, value, pattern):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError, match=pattern):
        resolve_model(value)


def test_the_shipped_acdc_guard_reference_stays_allowed():
    reference = json.loads((WEIGHTS_ROOT / "acdc" / "ensemble.json").read_text())["shape_guard"]
    assert reference == "../shape-ae-acdc"
    assert model_reference(WEIGHTS_ROOT / "acdc", reference, "shape_guard") == (WEIGHTS_ROOT / "shape-ae-acdc").resolve()


@pytest.mark.parametrize("reference", ["../../../../etc", "/etc", "../outside"])
def test_a_model_folder_cannot_point_outside_itself(tmp_path, reference):
    (tmp_path / "model").mkdir()
    (tmp_path / "outside").mkdir()
    with pytest.raises(InputError, match=r"'shape_guard' names .*, outside the model folder"):
        model_reference(tmp_path / "model", reference, "shape_guard")
    assert model_reference(tmp_path / "model", "guard", "shape_guard") == (tmp_path / "model" / "guard").resolve()
