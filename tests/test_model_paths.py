"""``--model`` names resolve to the shipped models, paths only when they look like paths; a model folder
cannot make the pipeline open files outside itself (issue 17)."""

from __future__ import annotations

import json
import resource

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


def _tiny_checkpoint(folder):
    from flows_support import write_tiny_model

    return write_tiny_model(folder, members=1) / "member0"


def test_a_hostile_shape_guard_reference_is_refused_by_name(tmp_path):
    from deconvseg.pipeline.ensemble import load_ensemble

    model = _tiny_checkpoint(tmp_path / "m").parent
    (tmp_path / "elsewhere").mkdir()
    (model / "ensemble.json").write_text(json.dumps({"shape_guard": "../elsewhere"}))
    with pytest.raises(InputError, match=r"'shape_guard' names '../elsewhere', outside the model folder"):
        load_ensemble(model).shape_guard_folder()


def test_a_member_linked_in_from_outside_is_not_opened(tmp_path):
    from deconvseg.pipeline.ensemble import load_ensemble

    model = _tiny_checkpoint(tmp_path / "m").parent
    other = _tiny_checkpoint(tmp_path / "other")
    (model / "member1").symlink_to(other, target_is_directory=True)
    with pytest.raises(InputError, match=r"'member' names 'member1', outside the model folder"):
        load_ensemble(model)


def test_network_widths_beyond_the_weights_file_are_refused_before_allocation(tmp_path):
    from deconvseg.pipeline.checkpoints import load_checkpoint

    member = _tiny_checkpoint(tmp_path / "m")
    meta = json.loads((member / "model.json").read_text())
    meta["arch_kwargs"]["widths"] = [400_000, 800_000]  # terabytes of weights if allocated
    meta.pop("weights_sha256", None)
    (member / "model.json").write_text(json.dumps(meta))
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (8 << 30, hard))  # an allocation would fail, not swap
    try:
        with pytest.raises(InputError, match=r"arch_kwargs declare a network of [\d.]+ MiB but weights.safetensors "
                                             r"holds [\d.]+ MiB"):
            load_checkpoint(member)
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def test_an_input_larger_than_the_memory_budget_is_refused_from_its_header(tmp_path):
    from deconvseg.pipeline.case import CaseConfig, CaseInput, run_case
    from deconvseg.pipeline.ensemble import load_ensemble
    from deconvseg.pipeline.segment import InferenceConfig

    model = _tiny_checkpoint(tmp_path / "m").parent
    header = tmp_path / "big.mha"  # declares 2000^3 float voxels, holds none
    header.write_text("ObjectType = Image\nNDims = 3\nDimSize = 2000 2000 2000\nElementSpacing = 1 1 1\n"
                      "ElementType = MET_FLOAT\nElementDataFile = LOCAL\n")
    config = CaseConfig(inference=InferenceConfig(memory_budget_mib=512))
    with pytest.raises(InputError, match=r"big.mha: 8e\+09 voxels exceed the limit of 3.16e\+07"):
        run_case(CaseInput("big", header), load_ensemble(model), config, tmp_path / "out")
    assert not (tmp_path / "out").exists()
