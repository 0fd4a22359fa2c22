"""Where a network runs and in which precision: one policy for training and inference.

A device is named ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``. ``auto`` takes the first CUDA
GPU, else Apple's MPS, else the CPU. A name that this machine cannot honour is refused with one
line that lists the devices it has.

Precision: ``fp32``; ``bf16`` or ``fp16`` autocast; or ``mixed``, which means bfloat16 where the
device supports it (CPUs, CUDA compute capability >= 8.0) and float16 otherwise. Under float16 the
loss is scaled (``torch.amp.GradScaler``) so that small gradients do not underflow; bfloat16 has
float32's exponent range and needs no scaling.

Nothing here changes process-wide state (threads, backends flags): the callers do.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from deconvseg.pipeline.errors import InputError

Precision = Literal["fp32", "mixed", "bf16", "fp16"]
_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(?::\d+)?)$")


def available_devices() -> list[str]:
    """The devices this process can use, e.g. ``["cpu", "cuda:0", "cuda:1"]``."""
    devices = ["cpu"]
    if torch.cuda.is_available():
        devices += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if torch.backends.mps.is_available():
        devices.append("mps")
    return devices


def check_device_name(name: str | torch.device, source: str = "device") -> str:
    """``name`` normalised (``"cuda:1"``), checked for its form only: for a device on another machine
    (a remote Dask worker), whose devices this one cannot see.

    Raises:
        InputError: for a name that is not ``auto | cpu | cuda[:N] | mps``.
    """
    text = str(name).strip().lower()
    if not _DEVICE.match(text):
        raise InputError(source, f"{name!r} is not a device name", "use one of: auto, cpu, cuda, cuda:N, mps")
    return text


def resolve_device(name: str | torch.device, source: str = "device") -> torch.device:
    """The torch device for ``name`` (``auto | cpu | cuda[:N] | mps``).

    Args:
        name: a device name or a ``torch.device``.
        source: what the name came from (a config key or ``--device``), for the error message.

    Raises:
        InputError: for a malformed name, or a device this machine does not have; the message
            lists the devices that exist.
    """
    devices = available_devices()
    fix = f"use one of: auto, {', '.join(devices)}"
    text = str(name).strip().lower()
    if not _DEVICE.match(text):
        raise InputError(source, f"{name!r} is not a device name", fix)
    if text == "auto":
        return torch.device(devices[1] if len(devices) > 1 else "cpu")
    device = torch.device(text)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(
                source, f"{text} was asked for but CUDA is not available here (devices: {', '.join(devices)})", fix
            )
        index = 0 if device.index is None else device.index
        if index >= torch.cuda.device_count():
            raise InputError(
                source, f"{text} does not exist; this machine has {torch.cuda.device_count()} CUDA device(s)", fix
            )
        return torch.device("cuda", index)
    if device.type == "mps" and "mps" not in devices:
        raise InputError(source, f"mps was asked for but is not available here (devices: {', '.join(devices)})", fix)
    return device


def place(module: nn.Module, device: torch.device, channels_last: bool) -> nn.Module:
    """Move ``module`` (in place) to ``device``, in ``channels_last_3d`` or the contiguous format."""
    fmt = torch.channels_last_3d if channels_last else torch.contiguous_format
    return module.to(device=device, memory_format=fmt)  # type: ignore[call-overload]  # missing from torch's stubs


def supports_bf16(device: torch.device) -> bool:
    """True where bfloat16 autocast is native: CPUs, MPS, CUDA GPUs of compute capability >= 8.0."""
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device)[0] >= 8
    return True


@dataclass(frozen=True)
class AmpPolicy:
    """Autocast settings of one device and precision.

    Attributes:
        device_type: ``"cpu"``, ``"cuda"`` or ``"mps"`` (``torch.autocast``'s first argument).
        dtype: the autocast dtype, or ``None`` for float32 (autocast off); under float16
            (``scaled``) gradients need a ``GradScaler``.
    """

    device_type: str
    dtype: torch.dtype | None

    @property
    def enabled(self) -> bool:
        return self.dtype is not None

    @property
    def scaled(self) -> bool:
        return self.dtype == torch.float16

    @property
    def name(self) -> str:
        """``fp32``, ``bf16`` or ``fp16``: what ``model.json`` records."""
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]

    def autocast(self) -> torch.autocast:
        """The ``torch.autocast`` context of this policy (a no-op context for float32)."""
        return torch.autocast(self.device_type, dtype=self.dtype or torch.float32, enabled=self.enabled)

    def scaler(self) -> torch.amp.GradScaler:
        """A gradient scaler, enabled only for float16."""
        return torch.amp.GradScaler(self.device_type, enabled=self.scaled)


def amp_policy(device: torch.device, precision: Precision) -> AmpPolicy:
    """The autocast policy for ``precision`` on ``device`` (``mixed``: bf16 where supported, else fp16)."""
    if precision == "fp32":
        return AmpPolicy(device.type, None)
    if precision == "mixed":
        precision = "bf16" if supports_bf16(device) else "fp16"
    return AmpPolicy(device.type, torch.bfloat16 if precision == "bf16" else torch.float16)
