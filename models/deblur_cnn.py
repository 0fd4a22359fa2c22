"""The deconvolution CNN of Xu et al. (NIPS 2014, "Deep Convolutional Neural Network for Image Deconvolution").

Two sub-networks, all convolutions *valid* (no padding), as in the paper:

1. Deconvolution sub-network: ``rank`` row kernels of length ``length`` (1 x L), then one column kernel
   per channel (L x 1, depthwise). Initialised from the SVD of the pseudo-inverse kernel
   ``k† = sum_j s_j u_j v_j^T`` (eq. 5), channel ``j`` computes ``s_j u_j * (v_j^T * y)``, so the sum of
   the channels is exactly ``k† * y`` before training. The paper uses 38 kernels of length 121.
2. Outlier-rejection sub-network: ``hidden`` maps of ``outlier_kernel`` x ``outlier_kernel``
   (paper: 512 @ 16x16), ``hidden`` maps of 1x1 (512 @ 1x1), one output map of ``out_kernel`` x
   ``out_kernel`` (1 @ 8x8), ReLU between them.

Deviation, kept for CPU training budgets: with ``residual=True`` the output adds the channel sum
(``k† * y``, centre-cropped) to the outlier network's output, and the outlier network's last layer starts
at zero, so the untrained network computes exactly ``k† * y`` and training learns a correction to the
Wiener estimate rather than the whole image. ``forward`` returns the image estimate (a regression
"logit"), smaller than the input by ``model.shrink`` pixels per axis; ``deblur_cnn_image`` pads first.
"""

from __future__ import annotations

from typing import cast

import numpy as np
import torch
from torch import nn

__all__ = ["DeblurCNN", "deblur_cnn_image"]


class DeblurCNN(nn.Module):
    """Xu et al.'s deconvolution + outlier-rejection network with configurable widths.

    Args:
        rank: number of separable deconvolution channels (paper: 38).
        length: 1-D kernel length, odd (paper: 121).
        hidden: width of the outlier-rejection layers (paper: 512).
        outlier_kernel: spatial size of the first outlier layer (paper: 16).
        out_kernel: spatial size of the output layer (paper: 8).
        residual: add the deconvolution estimate ``k† * y`` to the output (see module docstring).
    """

    def __init__(
        self,
        rank: int = 38,
        length: int = 121,
        hidden: int = 512,
        outlier_kernel: int = 16,
        out_kernel: int = 8,
        residual: bool = True,
    ) -> None:
        super().__init__()
        if length % 2 == 0:
            raise ValueError(f"length must be odd, got {length}")
        if (outlier_kernel + out_kernel) % 2 != 0:
            raise ValueError("outlier_kernel + out_kernel must be even so that the output stays centred")
        self.config = dict(
            rank=rank,
            length=length,
            hidden=hidden,
            outlier_kernel=outlier_kernel,
            out_kernel=out_kernel,
            residual=residual,
        )
        self.rows = nn.Conv2d(1, rank, (1, length), bias=False)
        self.cols = nn.Conv2d(rank, rank, (length, 1), groups=rank, bias=False)
        self.outlier = nn.Sequential(
            nn.Conv2d(rank, hidden, outlier_kernel),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, 1, out_kernel),
        )
        self.residual = residual
        if residual:  # start from the deconvolution estimate itself
            last = cast(nn.Conv2d, self.outlier[-1])
            nn.init.zeros_(last.weight)
            assert last.bias is not None  # nn.Conv2d's default bias=True
            nn.init.zeros_(last.bias)
        self.crop = (outlier_kernel + out_kernel - 2) // 2
        self.shrink = length - 1 + 2 * self.crop

    def init_from_separable(self, u: np.ndarray, s: np.ndarray, v: np.ndarray) -> None:
        """Set the deconvolution kernels from ``k† = sum_j s_j u_j v_j^T`` (``u``, ``v``: ``(rank, length)``).

        ``nn.Conv2d`` computes a correlation, so the factors are flipped to give a convolution.
        """
        rank, length = self.config["rank"], self.config["length"]
        if u.shape != (rank, length) or v.shape != (rank, length) or s.shape != (rank,):
            raise ValueError(f"expected factors of shape ({rank}, {length}); got u {u.shape}, v {v.shape}, s {s.shape}")
        with torch.no_grad():
            self.rows.weight.copy_(torch.from_numpy(v[:, ::-1].copy()).float().view(rank, 1, 1, length))
            cols = (s[:, None] * u)[:, ::-1].copy()
            self.cols.weight.copy_(torch.from_numpy(cols).float().view(rank, 1, length, 1))

    def deconvolve(self, y: torch.Tensor) -> torch.Tensor:
        """Deconvolution sub-network: ``(N, 1, H, W)`` -> ``(N, rank, H - length + 1, W - length + 1)``."""
        return self.cols(self.rows(y))

    def reject(self, features: torch.Tensor) -> torch.Tensor:
        """Outlier-rejection sub-network (plus the residual): features -> ``(N, 1, h - 2 crop, w - 2 crop)``."""
        out = self.outlier(features)
        if self.residual:
            c = self.crop
            out = out + features.sum(dim=1, keepdim=True)[:, :, c : features.shape[2] - c, c : features.shape[3] - c]
        return out

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        """``y``: ``(N, 1, H, W)`` blurred images -> ``(N, 1, H - shrink, W - shrink)`` estimates."""
        return self.reject(self.deconvolve(y))


def deblur_cnn_image(model: DeblurCNN, image: np.ndarray, tile: int = 256) -> np.ndarray:
    """Restore a 2D float image with ``model`` (symmetric padding, tiles of ``tile`` output pixels).

    Returns a float64 array of the input's shape; values are not clipped.
    """
    margin = model.shrink // 2
    padded = np.pad(np.asarray(image, dtype=np.float32), margin, mode="symmetric")
    out = np.empty(image.shape, dtype=np.float64)
    with torch.inference_mode():
        for y0 in range(0, image.shape[0], tile):
            for x0 in range(0, image.shape[1], tile):
                h, w = min(tile, image.shape[0] - y0), min(tile, image.shape[1] - x0)
                patch = torch.from_numpy(padded[y0 : y0 + h + 2 * margin, x0 : x0 + w + 2 * margin].copy())
                out[y0 : y0 + h, x0 : x0 + w] = model(patch[None, None])[0, 0].double().numpy()
    return out
