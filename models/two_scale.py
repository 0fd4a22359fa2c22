"""Two-pathway network: a local neighbourhood and a coarser, larger context around the same voxels.

After DeepMedic (Kamnitsas et al., "Efficient multi-scale 3D CNN with fully connected CRF for accurate
brain lesion segmentation", MedIA 2017): a second pathway sees ``context_factor`` times the extent at
``1 / context_factor`` of the resolution, so the receptive field grows without the cost of full
resolution. Here both pathways are ``DeconvNet3d`` trunks (switch unpooling).

Input contract (``deconvseg.pipeline.patches.context_crop`` builds it):
    ``local``   ``(N, C, D, H, W)`` at the working resolution.
    ``context`` the same shape; it covers the full-resolution box of size ``f * (D, H, W)``
                (``f = context_factor``, per axis) around the same centre, average-pooled by ``f``.
                Both crops are centred on voxel ``c`` as ``crop_patch`` does (start ``c - size // 2``),
                so the local patch starts at offset ``(f * S) // 2 - S // 2`` of that box on each axis.

The context features are upsampled by ``f`` (trilinear, which maps a pooled voxel's centre back to
the centre of its ``f`` voxels), the part over the local patch is cropped, concatenated with the local
features and fused by a conv block into logits of ``local``'s shape.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from deconvseg.models.blocks import ConvBlock, Norm, Size3, crop_center, triple
from deconvseg.models.deconvnet3d import DeconvNet3d, Skip


class TwoScaleNet(nn.Module):
    """Local + context ``DeconvNet3d`` pathways fused at the local resolution.

    Args:
        in_channels: image channels of each input.
        out_channels: classes (background included); ``forward`` returns their logits.
        context_factor: ``(z, y, x)`` (or int) extent/downsampling factor of the context input.
        widths: channels per level of the local pathway.
        context_widths: channels per level of the context pathway (default ``widths``).
        pool_sizes: pool windows of the local pathway (see ``DeconvNet3d``).
        context_pool_sizes: pool windows of the context pathway (default ``pool_sizes``).
        kernel_sizes: conv kernels per level (both pathways; default 3).
        norm: ``"instance"``, ``"batch"`` or ``"none"``.
        skip: skip fusion inside each pathway (``"none"``, ``"concat"``, ``"add"``).
        convs_per_block: conv layers per block.

    Raises:
        ValueError: for invalid sizes or options (see ``DeconvNet3d``).
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 2,
        context_factor: Size3 = (1, 3, 3),
        widths: Sequence[int] = (16, 32, 64),
        context_widths: Sequence[int] | None = None,
        pool_sizes: Sequence[Size3] | None = None,
        context_pool_sizes: Sequence[Size3] | None = None,
        kernel_sizes: Sequence[Size3] | None = None,
        norm: Norm = "instance",
        skip: Skip = "concat",
        convs_per_block: int = 2,
    ) -> None:
        super().__init__()
        self.context_factor = list(triple(context_factor, "context_factor"))
        context_widths = list(context_widths or widths)
        shared: dict[str, Any] = dict(
            in_channels=in_channels, kernel_sizes=kernel_sizes, norm=norm, skip=skip, convs_per_block=convs_per_block
        )
        self.local = DeconvNet3d(widths=widths, pool_sizes=pool_sizes, **shared)
        self.context = DeconvNet3d(
            widths=context_widths,
            pool_sizes=context_pool_sizes if context_pool_sizes is not None else pool_sizes,
            **shared,
        )
        # The trunks' 1x1x1 heads are unused: only their features are fused.
        del self.local.head, self.context.head
        fused = int(widths[0]) + context_widths[0]
        self.fuse = ConvBlock(fused, int(widths[0]), 1, norm, n_convs=2)
        self.head = nn.Conv3d(int(widths[0]), out_channels, kernel_size=1)
        self.out_channels = out_channels

    def forward(self, local: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """Logits of ``local``'s shape from the two neighbourhoods (see the module docstring).

        Raises:
            ValueError: when ``context`` and ``local`` differ in shape.
        """
        if context.shape != local.shape:
            raise ValueError(f"context must have local's shape {tuple(local.shape)}, got {tuple(context.shape)}")
        size = local.shape[-3:]
        ctx = self.context.features(context)
        ctx = upsample_center(ctx, self.context_factor, size)
        loc = self.local.features(local)
        return self.head(self.fuse(torch.cat([loc, ctx.to(loc.dtype)], dim=1)))


def upsample_center(coarse: torch.Tensor, factor: Sequence[int], size: Sequence[int]) -> torch.Tensor:
    """The central ``size`` window of ``coarse`` trilinearly upsampled by ``factor``.

    Equal to upsampling the whole map and cropping at ``(f * size) // 2 - size // 2`` (where
    ``deconvseg.pipeline.patches.context_crop`` puts the local patch), but only the
    coarse voxels under the window (plus one on each side for the interpolation) are upsampled.
    """
    lo, hi, start = [], [], []
    for f, s, n in zip(factor, size, coarse.shape[-3:]):
        offset = (f * s) // 2 - s // 2
        a = max(offset // f - 1, 0)
        b = min(-(-(offset + s) // f) + 1, n)
        lo.append(a)
        hi.append(b)
        start.append(offset - a * f)
    slab = coarse[..., lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
    if all(f == 1 for f in factor):
        return crop_center(slab, size, start)
    up = F.interpolate(slab, scale_factor=tuple(float(f) for f in factor), mode="trilinear", align_corners=False)
    return crop_center(up, size, start)
