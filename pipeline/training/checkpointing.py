"""Resumable training state without pickle: safetensors for tensors, JSON for everything else.

A state folder holds ``model.safetensors`` (current weights), ``optimizer.safetensors`` (every
tensor of the optimizer's state, keyed ``"<param index>.<name>"``), and ``state.json`` (step,
optimizer hyper-parameters, the sampler's numpy generator state, history, ...). The torch RNG
state travels in ``optimizer.safetensors`` under ``"torch_rng"``.

Tensors are saved as CPU tensors in the contiguous format, and loading copies them into the
model's and optimizer's own tensors: a state written on a GPU (or in ``channels_last_3d``) resumes
on a CPU, and the reverse.

Folders are written atomically: into a temporary sibling, then swapped in with ``os.replace``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from deconvseg.pipeline.files import atomic_folder

STATE_JSON = "state.json"


def save_train_state(
    folder: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]
) -> None:
    """Write model weights, optimizer state, torch RNG state and ``state`` (JSON-able) atomically."""
    opt = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {"torch_rng": torch.get_rng_state()}
    scalars: dict[str, dict[str, Any]] = {}
    for index, entry in opt["state"].items():
        for name, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}.{name}"] = _portable(value)
            else:
                scalars.setdefault(str(index), {})[name] = value
    payload = {**state, "optimizer": {"param_groups": opt["param_groups"], "scalars": scalars}}
    with atomic_folder(folder) as tmp:
        save_file({k: _portable(v) for k, v in model.state_dict().items()}, str(tmp / "model.safetensors"))
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        (tmp / STATE_JSON).write_text(json.dumps(payload))


def _portable(tensor: torch.Tensor) -> torch.Tensor:
    """A CPU tensor in the contiguous format (what safetensors stores)."""
    return tensor.detach().to("cpu").contiguous()


def load_train_state(folder: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Restore what ``save_train_state`` wrote into ``model`` and ``optimizer``; return ``state``.

    The torch RNG state is restored as well, so a resumed run draws the same numbers. The
    optimizer's tensors move to its parameters' device (``Optimizer.load_state_dict``).
    """
    folder = Path(folder)
    payload = json.loads((folder / STATE_JSON).read_text())
    model.load_state_dict(load_file(str(folder / "model.safetensors")))
    tensors = load_file(str(folder / "optimizer.safetensors"))
    torch.set_rng_state(tensors.pop("torch_rng"))
    opt_json = payload.pop("optimizer")
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    for index, entry in opt_json["scalars"].items():
        state.setdefault(int(index), {}).update(entry)
    optimizer.load_state_dict({"state": state, "param_groups": opt_json["param_groups"]})
    return payload


def has_train_state(folder: str | Path) -> bool:
    """True when ``folder`` holds a complete training state."""
    return (Path(folder) / STATE_JSON).is_file()
