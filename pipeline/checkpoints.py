"""Save and load checkpoints: safetensors weights + JSON, never pickle.

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

An ensemble is a folder of checkpoint folders with an optional ``ensemble.json``; ``deconvseg.pipeline.ensemble``
reads both into a typed ``Ensemble``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import torch
from safetensors import SafetensorError
from safetensors.torch import load_model, save_model
from torch import nn

from deconvseg.models.registry import ARCHITECTURES, build_model
from deconvseg.pipeline.devices import resolve_device
from deconvseg.pipeline.errors import InputError
from deconvseg.pipeline.files import atomic_file, file_digest, write_json_atomic

WEIGHTS = "weights.safetensors"
META = "model.json"
ENSEMBLE = "ensemble.json"


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
        meta.setdefault("context_factor", [int(f) for f in cast(Sequence[int], model.context_factor)])
    try:  # refuse unwritable metadata before touching the folder
        json.dumps(meta, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise ValueError(f"meta is not plain JSON (no NaN/inf, no objects): {err}") from err
    folder.mkdir(parents=True, exist_ok=True)
    # save_model drops the duplicate names of shared tensors (MONAI's UNets share some).
    with atomic_file(folder / WEIGHTS) as tmp:
        save_model(model, str(tmp))
    meta["weights_sha256"] = file_digest(folder / WEIGHTS)
    write_json_atomic(folder / META, meta)
    return folder


def load_checkpoint(folder: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """The network (eval mode, on ``device``: ``auto | cpu | cuda[:N] | mps``) and its metadata from a
    checkpoint folder.

    Only safetensors weights are read: nothing is unpickled. The returned ``meta`` is
    ``model.json`` plus ``"checkpoint_dir"`` (the folder, as a string).

    Raises:
        InputError: naming the folder, when it or a file is missing, corrupt, pickled, does not match
            its recorded hash, names an unknown architecture or does not fit the architecture.
    """
    folder, device = Path(folder), resolve_device(device)
    meta = read_json(folder / META, "checkpoint metadata")
    for key in ("arch", "arch_kwargs"):
        if key not in meta:
            raise InputError(folder / META, f"missing key {key!r}", "re-save the checkpoint with save_checkpoint")
    if meta["arch"] not in ARCHITECTURES:
        raise InputError(folder / META, f"unknown architecture {meta['arch']!r}", f"use one of {sorted(ARCHITECTURES)}")
    weights = folder / WEIGHTS
    if not weights.is_file():
        pickles = sorted(p.name for p in folder.iterdir() if p.suffix in (".pt", ".pth", ".ckpt", ".pkl"))
        hint = f"found {pickles}, which are pickles and are never loaded; " if pickles else ""
        raise InputError(weights, "missing weights file", hint + "save the model with save_checkpoint")
    if "weights_sha256" in meta and file_digest(weights) != meta["weights_sha256"]:
        raise InputError(weights, "content does not match weights_sha256 in model.json", "re-save the checkpoint")
    _check_declared_size(folder, meta, weights)
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


SIZE_SLACK = 64 << 20  # bytes a declared network may exceed twice its weights file by before it is refused


def _check_declared_size(folder: Path, meta: dict[str, Any], weights: Path) -> None:
    """Refuse ``arch_kwargs`` that declare far more parameters than the weights file holds, before allocating them.

    The network is first built on PyTorch's ``meta`` device, which records shapes and allocates
    nothing, so ``widths: [1000000, ...]`` in a hostile ``model.json`` costs no memory.
    """
    try:
        with torch.device("meta"):
            shapes = build_model(meta["arch"], **meta["arch_kwargs"])
    except (TypeError, ValueError, RuntimeError) as err:
        raise InputError(folder / META, f"cannot build {meta['arch']}: {err}", "fix arch_kwargs") from err
    declared = sum(t.numel() * t.element_size() for t in (*shapes.parameters(), *shapes.buffers()))
    held = weights.stat().st_size
    if declared > 2 * held + SIZE_SLACK:  # a safetensors file holds every tensor's bytes (a small mismatch is
        # left to the strict load, whose message names the tensors)
        raise InputError(
            folder / META,
            f"arch_kwargs declare a network of {declared / 2**20:.1f} MiB but {WEIGHTS} holds {held / 2**20:.1f} MiB",
            "fix arch_kwargs or re-save the checkpoint",
        )


def read_json(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise InputError(path, f"missing {what}", "pass a folder written by save_checkpoint")
    try:
        data = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(path, f"{what} is not valid JSON ({err})", "re-save it") from err
    if not isinstance(data, dict):
        raise InputError(path, f"{what} is not a JSON object", "re-save it")
    return data
