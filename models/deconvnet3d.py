"""DeconvNet in 3D: max-pooling switches, unpooling into them, then transposed-conv blocks.

Noh, Hong & Han, "Learning Deconvolution Network for Semantic Segmentation", ICCV 2015.
The encoder pools with ``MaxPool3d(return_indices=True)`` and keeps the *switches* (the flat index
of each window's maximum). The decoder mirrors it: unpooling writes each value back at its switch and
zeros elsewhere,

    U[s(w)] = y[w],   U[v] = 0 for every other voxel v of window w,

restoring the sparse map at the encoder's resolution (``output_size`` = the encoder's shape, so odd
sizes round-trip), and stride-1 transposed convolutions ("deconvolution") densify it.

Switch unpooling alone loses fine detail (ENVIRONMENT.md: 0.749 vs 0.859 Dice for a UNet on ACDC),
so ``skip`` can also merge the encoder's features at each level with the unpooled map --
``"concat"`` (channel concatenation, UNet-like) or ``"add"`` (sum, like FCN's fusion) -- while the
upsampling itself stays switch unpooling in every variant.

Pooling is ``ceil_mode=True``: every voxel takes part in a window and a level of size 1 stays 1, so
any input size works. Pool sizes may be anisotropic, e.g. ``[(1, 2, 2), (1, 2, 2), (2, 2, 2)]`` for
cardiac MR with 10 mm slices, and so may kernels (``(1, 3, 3)`` while the slice axis is coarse).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from deconvseg.models.blocks import ConvBlock, Norm, Size3, per_level

Skip = Literal["none", "concat", "add"]


class DeconvNet3d(nn.Module):
    """3D encoder-decoder with max-pool switch unpooling and transposed-conv blocks.

    Level ``i`` (0 = full resolution) has ``widths[i]`` channels; there are ``len(widths) - 1``
    pooling steps, the last level is the bottleneck.

    Args:
        in_channels: input image channels.
        out_channels: classes (background included); ``forward`` returns their logits.
        widths: channels per level, e.g. ``(16, 32, 64, 128)``.
        pool_sizes: one pool window (= stride) per pooling step, ``(z, y, x)`` or int; default 2.
        kernel_sizes: one odd conv kernel per level (encoder and decoder), default 3.
        norm: ``"instance"``, ``"batch"`` or ``"none"``.
        skip: ``"none"`` (pure DeconvNet), ``"concat"`` or ``"add"`` encoder features after unpooling.
        convs_per_block: conv layers per encoder block and transposed-conv layers per decoder block.

    Raises:
        ValueError: for fewer than two levels, a wrong number of per-level sizes, or unknown options.
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 2,
        widths: Sequence[int] = (16, 32, 64, 128),
        pool_sizes: Sequence[Size3] | None = None,
        kernel_sizes: Sequence[Size3] | None = None,
        norm: Norm = "instance",
        skip: Skip = "concat",
        convs_per_block: int = 2,
    ) -> None:
        super().__init__()
        widths = [int(w) for w in widths]
        if len(widths) < 2:
            raise ValueError(f"widths needs at least two levels, got {widths}")
        if skip not in ("none", "concat", "add"):
            raise ValueError(f"skip must be 'none', 'concat' or 'add', got {skip!r}")
        depth = len(widths)
        self.pool_sizes = per_level(pool_sizes, depth - 1, 2, "pool_sizes")
        kernels = per_level(kernel_sizes, depth, 3, "kernel_sizes")
        self.skip = skip
        self.out_channels = out_channels

        self.encoder = nn.ModuleList()
        for level, width in enumerate(widths):
            c_in = in_channels if level == 0 else widths[level - 1]
            self.encoder.append(ConvBlock(c_in, width, kernels[level], norm, convs_per_block))
        # decoder[level] runs at `level`'s resolution and ends with the channels of the level above
        # it (where its output is unpooled), or widths[0] at full resolution.
        self.decoder = nn.ModuleList()
        for level, width in enumerate(widths):
            c_in = width * (2 if skip == "concat" and level < depth - 1 else 1)
            c_out = widths[level - 1] if level > 0 else widths[0]
            self.decoder.append(
                ConvBlock(c_in, c_out, kernels[level], norm, convs_per_block, transposed=True, mid_channels=width)
            )
        self.head = nn.Conv3d(widths[0], out_channels, kernel_size=1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The last decoder block's features (``widths[0]`` channels) at the input's shape."""
        skips: list[torch.Tensor] = []
        switches: list[torch.Tensor] = []
        for level, block in enumerate(self.encoder):
            x = block(x)
            if level < len(self.pool_sizes):
                skips.append(x)
                pool = self.pool_sizes[level]
                x, idx = F.max_pool3d(x, pool, pool, ceil_mode=True, return_indices=True)
                switches.append(idx)
        for level in range(len(self.decoder) - 1, -1, -1):
            if level < len(self.pool_sizes):
                x = self._merge(x, skips[level])
            x = self.decoder[level](x)
            if level > 0:
                pool = self.pool_sizes[level - 1]
                x = unpool(x, switches[level - 1], pool, skips[level - 1].shape[-3:])
        return x

    def _merge(self, unpooled: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        unpooled = unpooled.to(skip.dtype)
        if self.skip == "concat":
            return torch.cat([unpooled, skip], dim=1)
        if self.skip == "add":
            return unpooled + skip
        return unpooled

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, out_channels, D, H, W)`` for an input ``(N, in_channels, D, H, W)`` of any size."""
        return self.head(self.features(x))


def unpool(x: torch.Tensor, switches: torch.Tensor, pool: Sequence[int], size: Sequence[int]) -> torch.Tensor:
    """Max-unpooling: each value of ``x`` goes to its stored switch in a zero map of spatial ``size``.

    The map keeps ``x``'s dtype and memory format: autocast would otherwise return it in float32
    and ``max_unpool3d`` in the contiguous format, costing two copies per level under bf16.
    """
    channels_last = x.is_contiguous(memory_format=torch.channels_last_3d)
    layout = torch.channels_last_3d if channels_last else torch.contiguous_format
    # The "meta" device (shape probes in deconvseg.pipeline.guards) has no autocast; there is nothing to cast.
    no_autocast = torch.autocast(x.device.type, enabled=False) if x.device.type != "meta" else contextlib.nullcontext()
    with no_autocast:
        out = F.max_unpool3d(x, switches, tuple(pool), tuple(pool), output_size=tuple(size))
    return out.contiguous(memory_format=layout)
