"""Build networks by name; save and load checkpoints (safetensors weights + JSON, never pickle).

A checkpoint is a folder::

    <folder>/weights.safetensors   the state dict (safetensors.torch), nothing executable
    <folder>/model.json            the metadata below, a plain JSON object

``model.json`` keys (written by the caller through ``meta``; ``save_checkpoint`` fills the first four
and ``weights_sha256`` from the model):

- ``arch`` (str): a key of ``ARCHITECTURES``; ``arch_kwargs`` (dict): the constructor's keyword values.
- ``in_channels``, ``out_channels`` (int).
- ``labels``: ``LabelTable.to_json()`` of the classes 1..out_channels-1 (0 = background).
- ``spacing``: ``[x, y, z]`` working spacing in mm; ``patch_size``: ``[z, y, x]`` training patch.
- ``normalization``: the spec of ``deconvseg.pipeline.normalize.fit_normalization``.
- ``context_factor``: ``[z, y, x]`` ints, two-scale networks only (``forward(local, context)``).
- ``metrics``: ``{"val_dice": {name: float}, "mean_dice": float}``.
- ``training``: data, seconds, seed, ...; ``postprocess``: optional per-class plan.
- ``weights_sha256``: hex digest of ``weights.safetensors`` (checked on load).

An ensemble is a folder of checkpoint folders (members sorted by name) with an optional
``ensemble.json``: ``{"fusion": "mean"|..., "weights": [...], "postprocess": {...}}`` (read by
``read_ensemble_config``, interpreted by the inference code).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from monai.networks.nets import DynUNet, UNet
from safetensors import SafetensorError
from safetensors.torch import load_model, save_model
from torch import nn

from deconvseg.models.deconvnet3d import DeconvNet3d
from deconvseg.models.fcn3d import FCN3d
from deconvseg.models.two_scale import TwoScaleNet
from deconvseg.pipeline.errors import InputError

WEIGHTS = "weights.safetensors"
META = "model.json"
ENSEMBLE = "ensemble.json"


def _unet(**kwargs: Any) -> nn.Module:
    """MONAI UNet, 3D by default (needs ``channels`` and ``strides``; sizes divisible by the strides)."""
    return UNet(**{"spatial_dims": 3, **kwargs})


def _dynunet(**kwargs: Any) -> nn.Module:
    """MONAI DynUNet, 3D by default; ``upsample_kernel_size`` defaults to ``strides[1:]``."""
    kwargs = {"spatial_dims": 3, **kwargs}
    if "strides" in kwargs and "upsample_kernel_size" not in kwargs:
        kwargs["upsample_kernel_size"] = list(kwargs["strides"])[1:]
    return DynUNet(**kwargs)


ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    "deconvnet3d": DeconvNet3d,
    "fcn3d": FCN3d,
    "two_scale": TwoScaleNet,
    "unet": _unet,
    "dynunet": _dynunet,
}


def build_model(arch: str, **arch_kwargs: Any) -> nn.Module:
    """A new network ``ARCHITECTURES[arch](**arch_kwargs)``; remembers ``arch``/``arch_kwargs`` on it.

    Raises:
        ValueError: for an unknown ``arch`` (or invalid kwargs, from the constructor).
    """
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; known: {sorted(ARCHITECTURES)}")
    model = ARCHITECTURES[arch](**arch_kwargs)
    model.arch = arch
    model.arch_kwargs = json.loads(json.dumps(arch_kwargs))  # plain JSON values (tuples -> lists)
    return model


def save_checkpoint(folder: str | Path, model: nn.Module, meta: dict[str, Any]) -> Path:
    """Write ``weights.safetensors`` then ``model.json`` into ``folder``, each atomically.

    ``model.json`` is written last and records the weights' SHA-256, so a folder interrupted between
    the two files fails to load rather than pairing new weights with old metadata.

    Args:
        folder: checkpoint folder (created if absent; existing files are replaced).
        model: a network built by ``build_model`` (or any module when ``meta`` gives ``arch`` and
            ``arch_kwargs``).
        meta: the JSON keys listed in the module docstring.

    Returns:
        The folder.

    Raises:
        ValueError: when the architecture is unknown or disagrees with the model, or ``meta`` is not
            plain JSON (NaN and inf are refused); nothing is written then.
    """
    folder = Path(folder)
    model = getattr(model, "_orig_mod", model)  # a torch.compile wrapper saves its module's names
    meta = dict(meta)
    if "arch" in meta and hasattr(model, "arch") and meta["arch"] != model.arch:
        raise ValueError(f"meta says arch {meta['arch']!r} but the model was built as {model.arch!r}")
    meta.setdefault("arch", getattr(model, "arch", None))
    meta.setdefault("arch_kwargs", getattr(model, "arch_kwargs", None))
    if meta["arch"] not in ARCHITECTURES or not isinstance(meta["arch_kwargs"], dict):
        raise ValueError("save_checkpoint needs a model from build_model or meta with 'arch' and 'arch_kwargs'")
    meta.setdefault("in_channels", meta["arch_kwargs"].get("in_channels", 1))
    meta.setdefault("out_channels", meta["arch_kwargs"].get("out_channels", 2))
    if hasattr(model, "context_factor"):
        meta.setdefault("context_factor", list(model.context_factor))
    try:  # refuse unwritable metadata before touching the folder
        json.dumps(meta, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise ValueError(f"meta is not plain JSON (no NaN/inf, no objects): {err}") from err
    folder.mkdir(parents=True, exist_ok=True)
    # save_model drops the duplicate names of shared tensors (MONAI's UNets share some).
    _write_atomic(folder / WEIGHTS, lambda p: save_model(model, str(p)))
    meta["weights_sha256"] = _sha256(folder / WEIGHTS)
    text = json.dumps(meta, indent=2, allow_nan=False)
    _write_atomic(folder / META, lambda p: Path(p).write_text(text))
    return folder


def load_checkpoint(folder: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """The network (eval mode, on ``device``) and its metadata from a checkpoint folder.

    Only safetensors weights are read: nothing is unpickled. The returned ``meta`` is
    ``model.json`` plus ``"checkpoint_dir"`` (the folder, as a string).

    Raises:
        InputError: naming the folder, when it or a file is missing, corrupt, pickled, does not match
            its recorded hash, names an unknown architecture or does not fit the architecture.
    """
    folder = Path(folder)
    meta = _read_json(folder / META, "checkpoint metadata")
    for key in ("arch", "arch_kwargs"):
        if key not in meta:
            raise InputError(folder / META, f"missing key {key!r}", "re-save the checkpoint with save_checkpoint")
    if meta["arch"] not in ARCHITECTURES:
        raise InputError(
            folder / META, f"unknown architecture {meta['arch']!r}", f"use one of {sorted(ARCHITECTURES)}"
        )
    weights = folder / WEIGHTS
    if not weights.is_file():
        pickles = sorted(p.name for p in folder.iterdir() if p.suffix in (".pt", ".pth", ".ckpt", ".pkl"))
        hint = f"found {pickles}, which are pickles and are never loaded; " if pickles else ""
        raise InputError(weights, "missing weights file", hint + "save the model with save_checkpoint")
    if "weights_sha256" in meta and _sha256(weights) != meta["weights_sha256"]:
        raise InputError(weights, "content does not match weights_sha256 in model.json", "re-save the checkpoint")
    try:
        model = build_model(meta["arch"], **meta["arch_kwargs"])
    except (TypeError, ValueError) as err:
        raise InputError(folder / META, f"cannot build {meta['arch']}: {err}", "fix arch_kwargs") from err
    try:
        load_model(model, str(weights), strict=True, device=str(device))
    except (SafetensorError, OSError) as err:
        raise InputError(weights, f"not a readable safetensors file ({err})", "re-save with save_checkpoint") from err
    except RuntimeError as err:
        problem = f"weights do not fit {meta['arch']}({meta['arch_kwargs']}): {' '.join(str(err).split())[:300]}"
        raise InputError(folder, problem, "check arch_kwargs in model.json or re-save the checkpoint") from err
    meta["checkpoint_dir"] = str(folder)
    return model.to(device).eval(), meta


def load_ensemble(folder: str | Path, device: str | torch.device = "cpu") -> list[tuple[nn.Module, dict[str, Any]]]:
    """The members of an ensemble: a checkpoint folder gives one; else each subfolder with ``model.json``.

    Raises:
        InputError: when ``folder`` is not a folder or holds no checkpoint.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(folder, "no such model folder", "pass a checkpoint or ensemble folder, e.g. models/weights/acdc")
    if (folder / META).is_file():
        return [load_checkpoint(folder, device)]
    members = sorted(p for p in folder.iterdir() if (p / META).is_file())
    if not members:
        raise InputError(folder, f"no {META} in it or its subfolders", "pass a checkpoint or ensemble folder")
    return [load_checkpoint(member, device) for member in members]


def read_ensemble_config(folder: str | Path) -> dict[str, Any]:
    """``ensemble.json`` of an ensemble folder as a dict, or ``{}`` when there is none.

    Raises:
        InputError: when ``ensemble.json`` exists but is not a JSON object.
    """
    path = Path(folder) / ENSEMBLE
    return _read_json(path, "ensemble config") if path.is_file() else {}


def _read_json(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise InputError(path, f"missing {what}", "pass a folder written by save_checkpoint")
    try:
        data = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(path, f"{what} is not valid JSON ({err})", "re-save it") from err
    if not isinstance(data, dict):
        raise InputError(path, f"{what} is not a JSON object", "re-save it")
    return data


def _write_atomic(path: Path, write: Callable[[Path], object]) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o644)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
