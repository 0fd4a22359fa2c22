"""FCN baseline in 3D: pooled encoder, transposed-conv upsampling only, skip fusion of score maps.

Long, Shelhamer & Darrell, "Fully Convolutional Networks for Semantic Segmentation", CVPR 2015.
Each level's features are scored by a 1x1x1 convolution; from the coarsest level up, the running
score map is upsampled by a learned transposed convolution (kernel = stride = the pool size),
cropped to the finer level's shape (FCN's "crop" layer; the upsampling starts as nearest-neighbour
copying, where FCN starts from bilinear interpolation, and is learned from there) and added to that level's score:

    S_L = score_L(f_L),   S_l = score_l(f_l) + crop(up_l(S_{l+1})),   logits = S_0.

This is FCN-8s's fusion carried to every level. ``fuse_channels`` widens the fused maps beyond the
class count (FCN fuses class scores; wider maps are an option, 1x1x1 head at the end).
The encoder is the same conv blocks and ``ceil_mode`` max pooling as ``DeconvNet3d``, without switches,
so the two differ only in how they upsample.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from deconvseg.models.blocks import ConvBlock, Norm, Size3, crop_center, per_level


class FCN3d(nn.Module):
    """3D FCN with transposed-conv upsampling and additive score fusion at every level.

    Args:
        in_channels: input image channels.
        out_channels: classes (background included); ``forward`` returns their logits.
        widths: encoder channels per level, e.g. ``(16, 32, 64, 128)``.
        pool_sizes: one pool window (= stride) per pooling step, ``(z, y, x)`` or int; default 2.
        kernel_sizes: one odd conv kernel per level, default 3.
        norm: ``"instance"``, ``"batch"`` or ``"none"``.
        convs_per_block: conv layers per encoder block.
        fuse_channels: channels of the fused maps; default ``out_channels`` (FCN's class scores).

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
        convs_per_block: int = 2,
        fuse_channels: int | None = None,
    ) -> None:
        super().__init__()
        widths = [int(w) for w in widths]
        if len(widths) < 2:
            raise ValueError(f"widths needs at least two levels, got {widths}")
        depth = len(widths)
        self.pool_sizes = per_level(pool_sizes, depth - 1, 2, "pool_sizes")
        kernels = per_level(kernel_sizes, depth, 3, "kernel_sizes")
        fuse = fuse_channels or out_channels
        self.out_channels = out_channels
        self.encoder = nn.ModuleList(
            ConvBlock(in_channels if i == 0 else widths[i - 1], w, kernels[i], norm, convs_per_block)
            for i, w in enumerate(widths)
        )
        self.score = nn.ModuleList(nn.Conv3d(w, fuse, kernel_size=1) for w in widths)
        self.up = nn.ModuleList(nn.ConvTranspose3d(fuse, fuse, p, stride=p, bias=False) for p in self.pool_sizes)
        for up in self.up:  # start as nearest-neighbour upsampling, as FCN starts from bilinear
            weight = cast(nn.ConvTranspose3d, up).weight
            with torch.no_grad():
                weight.zero_()
                weight[torch.arange(fuse), torch.arange(fuse)] = 1.0
        self.head = nn.Identity() if fuse_channels is None else nn.Conv3d(fuse, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, out_channels, D, H, W)`` for an input ``(N, in_channels, D, H, W)`` of any size."""
        feats: list[torch.Tensor] = []
        for level, block in enumerate(self.encoder):
            if level > 0:
                pool = self.pool_sizes[level - 1]
                x = F.max_pool3d(x, pool, pool, ceil_mode=True)
            x = block(x)
            feats.append(x)
        s = self.score[-1](feats[-1])
        for level in range(len(feats) - 2, -1, -1):
            up = self.up[level](s)
            s = self.score[level](feats[level]) + crop_center(up, feats[level].shape[-3:], (0, 0, 0))
        return self.head(s)
