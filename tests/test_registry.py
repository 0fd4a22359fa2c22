"""Registry: every architecture builds, checkpoints round-trip exactly, pickles and bad files are refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from deconvseg.models.registry import ARCHITECTURES, build_model
from deconvseg.pipeline.checkpoints import load_checkpoint, save_checkpoint
from deconvseg.pipeline.ensemble import load_ensemble
from deconvseg.pipeline.errors import InputError
from deconvseg.pipeline.labels import ACDC, LabelTable

SMALL = {
    "deconvnet3d": dict(in_channels=1, out_channels=4, widths=(4, 8, 8), pool_sizes=[(1, 2, 2), (2, 2, 2)]),
    "fcn3d": dict(in_channels=1, out_channels=4, widths=[4, 8], norm="batch"),
    "two_scale": dict(in_channels=1, out_channels=4, context_factor=[1, 3, 3], widths=[4, 8]),
    "unet": dict(in_channels=1, out_channels=4, channels=(4, 8, 16), strides=((1, 2, 2), 2), num_res_units=1),
    "dynunet": dict(in_channels=1, out_channels=4, kernel_size=[3, 3, 3], strides=[1, (1, 2, 2), 2], filters=[4, 8, 8]),
}
META = {
    "labels": ACDC.to_json(),
    "spacing": [1.5, 1.5, 10.0],
    "patch_size": [8, 32, 32],
    "normalization": {"scheme": "mr_zscore"},
    "metrics": {"val_dice": {"myocardium": 0.5}, "mean_dice": 0.5},
    "training": {"seed": 0, "seconds": 1.0},
}


def _forward(model: torch.nn.Module, arch: str) -> torch.Tensor:
    x = torch.randn(1, 1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return model(x, x.flip(-1)) if arch == "two_scale" else model(x)


def _trained(arch: str) -> torch.nn.Module:
    """A model whose weights (and batch-norm statistics) moved away from their initial values."""
    torch.manual_seed(0)
    model = build_model(arch, **SMALL[arch])
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.01 * torch.randn_like(param))
    _forward(model.train(), arch)  # updates running statistics where there are any
    return model.eval()


def test_registry_is_an_explicit_mapping() -> None:
    assert sorted(ARCHITECTURES) == ["deblur_cnn", "deconvnet3d", "dynunet", "fcn3d", "two_scale", "unet"]


@pytest.mark.parametrize("arch", sorted(SMALL))
def test_checkpoint_round_trip_gives_identical_outputs(arch: str, tmp_path: Path) -> None:
    model = _trained(arch)
    folder = save_checkpoint(tmp_path / arch, model, META)
    assert sorted(p.name for p in folder.iterdir()) == ["model.json", "weights.safetensors"]
    loaded, meta = load_checkpoint(folder)
    assert not loaded.training
    assert torch.equal(_forward(loaded, arch), _forward(model, arch))
    saved = json.loads((folder / "model.json").read_text())
    assert saved["arch"] == arch and saved["in_channels"] == 1 and saved["out_channels"] == 4
    assert LabelTable.from_json(saved["labels"]) == ACDC and saved["spacing"] == [1.5, 1.5, 10.0]
    assert len(saved["weights_sha256"]) == 64
    assert meta["checkpoint_dir"] == str(folder)
    assert (saved.get("context_factor") == [1, 3, 3]) == (arch == "two_scale")


def test_overwriting_a_checkpoint_replaces_both_files(tmp_path: Path) -> None:
    first, second = _trained("deconvnet3d"), build_model("deconvnet3d", **SMALL["deconvnet3d"]).eval()
    save_checkpoint(tmp_path / "m", first, META)
    save_checkpoint(tmp_path / "m", second, {**META, "training": {"seed": 1}})
    loaded, meta = load_checkpoint(tmp_path / "m")
    assert meta["training"] == {"seed": 1}
    assert torch.equal(_forward(loaded, "deconvnet3d"), _forward(second, "deconvnet3d"))
    assert not [p for p in (tmp_path / "m").iterdir() if p.name.startswith(".")]  # no temp files left


def test_bad_meta_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    model = _trained("fcn3d")
    for meta, match in [
        ({**META, "metrics": {"mean_dice": float("nan")}}, "not plain JSON"),
        ({**META, "training": {"data": tmp_path}}, "not plain JSON"),
        ({**META, "arch": "deconvnet3d"}, "built as 'fcn3d'"),
    ]:
        with pytest.raises(ValueError, match=match):
            save_checkpoint(tmp_path / "m", model, meta)
        assert not (tmp_path / "m").exists()


def test_a_compiled_wrapper_saves_the_plain_names(tmp_path: Path) -> None:
    model = _trained("fcn3d")
    wrapper = torch.nn.Module()
    wrapper._orig_mod = model  # what torch.compile's OptimizedModule holds
    loaded, _ = load_checkpoint(save_checkpoint(tmp_path / "m", wrapper, META))
    assert torch.equal(_forward(loaded, "fcn3d"), _forward(model, "fcn3d"))


def test_a_pickle_is_never_loaded(tmp_path: Path) -> None:
    model = _trained("fcn3d")
    folder = save_checkpoint(tmp_path / "m", model, META)
    weights = folder / "weights.safetensors"
    torch.save(model.state_dict(), weights)  # a pickle under the safetensors name
    with pytest.raises(InputError, match="weights_sha256"):
        load_checkpoint(folder)
    meta = json.loads((folder / "model.json").read_text())
    del meta["weights_sha256"]
    (folder / "model.json").write_text(json.dumps(meta))
    with pytest.raises(InputError, match="not a readable safetensors file"):
        load_checkpoint(folder)
    weights.rename(folder / "model.pt")
    with pytest.raises(InputError, match=r"model\.pt.*never loaded"):
        load_checkpoint(folder)


@pytest.mark.parametrize(
    "damage, match",
    [
        (lambda f: (f / "model.json").unlink(), "missing checkpoint metadata"),
        (lambda f: (f / "model.json").write_text("{not json"), "not valid JSON"),
        (lambda f: (f / "model.json").write_text('{"arch": "segnet", "arch_kwargs": {}}'), "unknown architecture"),
        (lambda f: (f / "weights.safetensors").write_bytes(b"\x00" * 5), "weights_sha256"),
    ],
)
def test_broken_checkpoints_raise_input_error_naming_the_folder(damage, match: str, tmp_path: Path) -> None:
    folder = save_checkpoint(tmp_path / "ckpt", _trained("deconvnet3d"), META)
    damage(folder)
    with pytest.raises(InputError, match=match) as info:
        load_checkpoint(folder)
    assert str(folder) in str(info.value)


def test_weights_that_do_not_fit_the_architecture(tmp_path: Path) -> None:
    folder = save_checkpoint(tmp_path / "ckpt", _trained("deconvnet3d"), META)
    meta = json.loads((folder / "model.json").read_text())
    meta["arch_kwargs"]["widths"] = [4, 8, 16]
    (folder / "model.json").write_text(json.dumps(meta))
    with pytest.raises(InputError, match="weights do not fit deconvnet3d"):
        load_checkpoint(folder)


def test_ensemble_members_sorted_and_config(tmp_path: Path) -> None:
    for name, arch in [("b_fcn", "fcn3d"), ("a_deconv", "deconvnet3d")]:
        save_checkpoint(tmp_path / name, _trained(arch), META)
    (tmp_path / "notes").mkdir()
    assert load_ensemble(tmp_path).settings.fusion == "mean"
    (tmp_path / "ensemble.json").write_text(json.dumps({"fusion": "weighted_mean", "weights": [0.4, 0.6]}))
    ensemble = load_ensemble(tmp_path)
    assert [member.spec.arch for member in ensemble.members] == ["deconvnet3d", "fcn3d"]
    assert ensemble.settings.fusion == "weighted_mean" and ensemble.settings.weights == [0.4, 0.6]
    assert ensemble.table == LabelTable.from_json(META["labels"]) and len(ensemble.version) == 64
    assert len(load_ensemble(tmp_path / "a_deconv").members) == 1
    with pytest.raises(InputError, match="no model.json"):
        load_ensemble(tmp_path / "notes")
    with pytest.raises(InputError, match="no such model folder"):
        load_ensemble(tmp_path / "absent")
    (tmp_path / "ensemble.json").write_text("[1, 2]")
    with pytest.raises(InputError, match="not a JSON object"):
        load_ensemble(tmp_path)


def test_ensemble_settings_and_specs_are_validated_once_at_load(tmp_path: Path) -> None:
    save_checkpoint(tmp_path / "a", _trained("deconvnet3d"), META)
    (tmp_path / "ensemble.json").write_text(json.dumps({"fusion": "median"}))
    with pytest.raises(InputError, match=r"ensemble.json: invalid fusion"):
        load_ensemble(tmp_path)
    (tmp_path / "ensemble.json").write_text(json.dumps({"weights": [0.5, 0.5]}))
    with pytest.raises(InputError, match="2 fusion weights for 1 members"):
        load_ensemble(tmp_path)
    (tmp_path / "ensemble.json").unlink()
    meta = json.loads((tmp_path / "a" / "model.json").read_text())
    (tmp_path / "a" / "model.json").write_text(json.dumps({**meta, "spacing": [1.0, 0.0, 1.0]}))
    with pytest.raises(InputError, match="invalid spacing"):
        load_ensemble(tmp_path)
    (tmp_path / "a" / "model.json").write_text(json.dumps({**meta, "out_channels": 3}))
    with pytest.raises(InputError, match="out_channels 3 does not match 3 labels"):
        load_ensemble(tmp_path)
