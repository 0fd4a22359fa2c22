"""Autoencoders: DeconvNet-style (switch unpooling + transposed convolutions), plain upsampling,
fully connected, and a 3D shape autoencoder for one-hot label maps.

All 2D models map ``(n, 1, 28, 28)`` images to a ``code_size`` vector and back; ``forward``
returns logits (apply ``sigmoid`` for pixel values in [0, 1]).

References:
    Noh, Hong, Han, "Learning Deconvolution Network for Semantic Segmentation", ICCV 2015
    (unpooling into the encoder's max-pool switches, then transposed convolutions).
    Masci et al., "Stacked Convolutional Auto-Encoders for Hierarchical Feature Extraction", 2011.
    Larrazabal et al., "Post-DAE: Anatomically Plausible Segmentation via Post-Processing with
    Denoising Autoencoders", IEEE TMI 2020 (the shape autoencoder's role).

Note on fairness: the switch decoder receives, besides the code, the argmax position of every
2x2 pooling window (2 bits per window and channel: 16*14*14*2 + 32*7*7*2 = 9,408 bits here),
which is side information the code does not carry. ``unpool="upsample"`` has exactly the same
weights and no side channel; it is the strict same-bottleneck comparison.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F

Unpool = Literal["switch", "upsample"]


class ConvAutoencoder(nn.Module):
    """Two conv + max-pool stages, a linear bottleneck, and a mirrored decoder.

    Decoder (``unpool="switch"``): linear -> unpool into stage-2 switches -> transposed conv ->
    unpool into stage-1 switches -> transposed conv (Noh et al. 2015). With ``unpool="upsample"``
    each unpooling is a nearest-neighbour 2x upsampling instead; the weights are identical.

    Args:
        code_size: length of the bottleneck vector.
        channels: feature channels of the two encoder stages.
        image_size: side of the square input (divisible by 4).
        unpool: ``"switch"`` or ``"upsample"``.
    """

    def __init__(
        self,
        code_size: int = 32,
        channels: tuple[int, int] = (16, 32),
        image_size: int = 28,
        unpool: Unpool = "switch",
    ) -> None:
        super().__init__()
        if unpool not in ("switch", "upsample"):
            raise ValueError(f"unpool must be 'switch' or 'upsample', got {unpool!r}")
        if image_size % 4:
            raise ValueError(f"image_size must be divisible by 4, got {image_size}")
        c1, c2 = channels
        self.unpool_mode = unpool
        self.inner = (c2, image_size // 4, image_size // 4)
        flat = c2 * (image_size // 4) ** 2
        self.conv1 = nn.Conv2d(1, c1, 3, padding=1)
        self.conv2 = nn.Conv2d(c1, c2, 3, padding=1)
        self.pool = nn.MaxPool2d(2, return_indices=True)
        self.to_code = nn.Linear(flat, code_size)
        self.from_code = nn.Linear(code_size, flat)
        self.unpool = nn.MaxUnpool2d(2)
        self.deconv2 = nn.ConvTranspose2d(c2, c1, 3, padding=1)
        self.deconv1 = nn.ConvTranspose2d(c1, 1, 3, padding=1)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Code ``(n, code_size)`` and the pooling switches (stage 1, stage 2)."""
        h, s1 = self.pool(F.relu(self.conv1(x)))
        h, s2 = self.pool(F.relu(self.conv2(h)))
        return self.to_code(h.flatten(1)), [s1, s2]

    def _up(self, h: torch.Tensor, switches: torch.Tensor) -> torch.Tensor:
        if self.unpool_mode == "switch":
            return self.unpool(h, switches)
        return F.interpolate(h, scale_factor=2, mode="nearest")

    def decode(self, code: torch.Tensor, switches: list[torch.Tensor]) -> torch.Tensor:
        """Logits ``(n, 1, H, W)`` from a code (and, for ``"switch"``, the encoder's switches)."""
        h = F.relu(self.from_code(code)).view(-1, *self.inner)
        h = F.relu(self.deconv2(self._up(h, switches[1])))
        return self.deconv1(self._up(h, switches[0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        code, switches = self.encode(x)
        return self.decode(code, switches)


class FCAutoencoder(nn.Module):
    """Fully connected autoencoder: ``pixels -> hidden -> code -> hidden -> pixels`` (ReLU).

    Args:
        code_size: length of the bottleneck vector.
        hidden: widths of the hidden layers on each side (mirrored in the decoder).
        image_size: side of the square input.
    """

    def __init__(self, code_size: int = 32, hidden: tuple[int, ...] = (256,), image_size: int = 28) -> None:
        super().__init__()
        self.image_size = image_size
        widths = [image_size * image_size, *hidden, code_size]
        enc: list[nn.Module] = []
        dec: list[nn.Module] = []
        for a, b in zip(widths[:-1], widths[1:]):
            enc += [nn.Linear(a, b), nn.ReLU()]
        for a, b in zip(widths[::-1][:-1], widths[::-1][1:]):
            dec += [nn.Linear(a, b), nn.ReLU()]
        self.encoder = nn.Sequential(*enc[:-1])  # no ReLU on the code
        self.decoder = nn.Sequential(*dec[:-1])  # logits out

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x.flatten(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encode(x)).view(-1, 1, self.image_size, self.image_size)


def _conv_bn(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv3d(c_in, c_out, 3, padding=1), nn.BatchNorm3d(c_out), nn.LeakyReLU(0.1)]


def _up_bn(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.ConvTranspose3d(c_in, c_out, 2, stride=2), nn.BatchNorm3d(c_out), nn.LeakyReLU(0.1)]


class ShapeAutoencoder3D(nn.Module):
    """Autoencoder for one-hot label maps on a fixed grid (a learned shape prior, Post-DAE style).

    Encoder: a strided conv (k=2, s=2) to ``channels[0]``, then two (conv 3x3x3 + max-pool 2)
    stages, a linear bottleneck. Decoder: linear, two (transposed conv k=2, s=2 + conv 3x3x3)
    stages, and a transposed conv (k=2, s=2) to class logits. Every hidden conv has batch norm
    and a leaky ReLU. Nothing runs at full grid resolution but the first and last strided
    layers, which keeps training cheap on a CPU. The decoder deliberately does NOT unpool into
    switches: switches would pass the input's shape around the bottleneck, and a shape prior must
    reconstruct only what it learned.

    Args:
        n_classes: label values 0..n_classes-1 (background included), one input channel each.
        grid: ``(z, y, x)`` size of the fixed grid; each side divisible by 8.
        channels: features at 1/2, 1/4 and 1/8 of the grid.
        code_size: ``"dense"``: length of the bottleneck vector; ``"spatial"``: channels of the
            bottleneck map at 1/8 of the grid (code length ``code_size * prod(grid) / 512``).
        bottleneck: ``"dense"`` (linear layers) or ``"spatial"`` (1x1x1 convolutions: fully
            convolutional, so a shape is coded the same wherever it sits on the grid).
    """

    def __init__(
        self,
        n_classes: int = 4,
        grid: tuple[int, int, int] = (16, 64, 64),
        channels: tuple[int, int, int] = (8, 16, 32),
        code_size: int = 64,
        bottleneck: Literal["dense", "spatial"] = "dense",
    ) -> None:
        super().__init__()
        if any(side % 8 for side in grid):
            raise ValueError(f"every grid side must be divisible by 8, got {grid}")
        c0, c1, c2 = channels
        self.n_classes = n_classes
        self.grid = tuple(grid)
        self.inner = (c2, *(side // 8 for side in grid))
        flat = c2 * (grid[0] // 8) * (grid[1] // 8) * (grid[2] // 8)
        self.encoder = nn.Sequential(
            nn.Conv3d(n_classes, c0, 2, stride=2),
            nn.BatchNorm3d(c0),
            nn.LeakyReLU(0.1),
            *_conv_bn(c0, c1),
            nn.MaxPool3d(2),
            *_conv_bn(c1, c2),
            nn.MaxPool3d(2),
        )
        self.dense = bottleneck == "dense"
        if self.dense:
            self.to_code: nn.Module = nn.Linear(flat, code_size)
            self.from_code: nn.Module = nn.Linear(code_size, flat)
        elif bottleneck == "spatial":
            self.to_code = nn.Conv3d(c2, code_size, 1)
            self.from_code = nn.Conv3d(code_size, c2, 1)
        else:
            raise ValueError(f"bottleneck must be 'dense' or 'spatial', got {bottleneck!r}")
        self.decoder = nn.Sequential(
            *_up_bn(c2, c1),
            *_conv_bn(c1, c1),
            *_up_bn(c1, c0),
            *_conv_bn(c0, c0),
            nn.ConvTranspose3d(c0, n_classes, 2, stride=2),
        )

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        h = self.encoder(x)
        return self.to_code(h.flatten(1) if self.dense else h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.leaky_relu(self.from_code(self.encode(x)), 0.1)
        return self.decoder(h.view(-1, *self.inner) if self.dense else h)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def build_autoencoder(name: str, code_size: int = 32) -> nn.Module:
    """The MNIST models compared by the benchmark: ``conv``, ``conv_upsample`` or ``fc``."""
    if name == "conv":
        return ConvAutoencoder(code_size, unpool="switch")
    if name == "conv_upsample":
        return ConvAutoencoder(code_size, unpool="upsample")
    if name == "fc":
        return FCAutoencoder(code_size)
    raise ValueError(f"unknown autoencoder {name!r}; use conv, conv_upsample or fc")
