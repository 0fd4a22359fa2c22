"""Build networks by name: ``ARCHITECTURES`` maps the ``arch`` of a checkpoint to its constructor.

Checkpoints (safetensors + ``model.json``) are saved and loaded by ``deconvseg.pipeline.checkpoints``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from monai.networks.nets import DynUNet, UNet
from torch import nn

from deconvseg.models.deblur_cnn import DeblurCNN
from deconvseg.models.deconvnet3d import DeconvNet3d
from deconvseg.models.fcn3d import FCN3d
from deconvseg.models.two_scale import TwoScaleNet


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
    "deblur_cnn": DeblurCNN,
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
    setattr(model, "arch", arch)  # noqa: B010 (nn.Module.__setattr__ is typed for tensors/modules only)
    model.arch_kwargs = json.loads(json.dumps(arch_kwargs))  # plain JSON values (tuples -> lists)
    return model
