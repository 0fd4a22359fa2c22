"""Voxel-neighbourhood patches for training: crops, two-scale context crops and the sampler.

A patch of size ``p`` (``(z, y, x)``) "centred" on voxel ``c`` covers ``[c - p // 2, c - p // 2 + p)``
on every axis; voxels outside the volume are filled with ``pad_value`` (labels with 0).

Two-scale networks (DeepMedic, Kamnitsas et al. 2017) see a second, coarser neighbourhood around
the same centre: ``context_crop`` takes ``p * f`` voxels around ``c`` and average-pools them by
``f``, so the context has the shape of the local patch and ``f`` times its extent.

The sampler follows nnU-Net's foreground oversampling (Isensee et al. 2021): in every batch at
least ``ceil(fg_fraction * batch)`` patches are centred on a voxel of one foreground class; the
class is drawn uniformly among the classes present in the case (class balance), the voxel
uniformly among that class's voxels. The other patches are centred anywhere in the volume.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from types import EllipsisType
from typing import cast

import numpy as np

from deconvseg.pipeline.errors import InputError
from deconvseg.pipeline.training.augment import AugmentParams, RandomAugment, apply_augment

Triple = tuple[int, int, int]


def crop_patch(array: np.ndarray, center: Sequence[int], size: Sequence[int], pad_value: float = 0.0) -> np.ndarray:
    """Crop ``size`` voxels around ``center`` from the last three axes, padding outside the array.

    Args:
        array: ``(..., z, y, x)`` array (leading axes, e.g. channels, are kept whole).
        center: centre voxel ``(z, y, x)``; may lie outside the array.
        size: patch size ``(z, y, x)``.
        pad_value: value for voxels outside ``array``.

    Returns:
        A new array of shape ``(..., *size)`` and the dtype of ``array``.
    """
    spatial = array.shape[-3:]
    out = np.full(array.shape[:-3] + tuple(size), pad_value, dtype=array.dtype)
    src: list[slice] = []
    dst: list[slice] = []
    for c, s, n in zip(center, size, spatial):
        start = int(c) - int(s) // 2
        lo, hi = max(start, 0), min(start + int(s), n)
        if hi <= lo:
            return out
        src.append(slice(lo, hi))
        dst.append(slice(lo - start, hi - start))
    to: tuple[EllipsisType | slice, ...] = (..., *dst)
    frm: tuple[EllipsisType | slice, ...] = (..., *src)
    out[to] = array[frm]
    return out


def context_crop(
    array: np.ndarray,
    center: Sequence[int],
    size: Sequence[int],
    factor: Sequence[int],
    pad_value: float = 0.0,
) -> np.ndarray:
    """The coarse context neighbourhood of a two-scale network, shaped like the local patch.

    ``context = avgpool_f(crop(array, center, size * f))``: the crop covers ``f`` times the local
    extent around the same centre and is averaged over non-overlapping ``f``-blocks.

    Args:
        array: ``(..., z, y, x)`` image (intensities; labels make no sense averaged).
        center: centre voxel ``(z, y, x)`` of the local patch.
        size: local patch size ``(z, y, x)``.
        factor: integer context factor per axis ``(z, y, x)``; ``(1, 1, 1)`` returns the local patch.
        pad_value: value for voxels outside ``array``.

    Returns:
        A float32 array of shape ``(..., *size)``.
    """
    f = [int(v) for v in factor]
    if any(v < 1 for v in f):
        raise ValueError(f"context factor must be positive integers, got {tuple(factor)}")
    big = [int(s) * v for s, v in zip(size, f)]
    crop = crop_patch(array, center, big, pad_value).astype(np.float32, copy=False)
    lead = crop.shape[:-3]
    blocks = crop.reshape(*lead, int(size[0]), f[0], int(size[1]), f[1], int(size[2]), f[2])
    return blocks.mean(axis=(-5, -3, -1), dtype=np.float32)


@dataclass(frozen=True)
class Batch:
    """One training batch (numpy; the training loop moves it to torch)."""

    image: np.ndarray  # (B, 1, z, y, x) float32
    label: np.ndarray  # (B, z, y, x) int64
    context: np.ndarray | None  # (B, 1, z, y, x) float32 for two-scale nets
    foreground: np.ndarray  # (B,) bool: patch was centred on a foreground voxel
    params: tuple[AugmentParams, ...]


class PatchSampler:
    """Draw augmented training patches from a list of normalised (image, label) arrays.

    Args:
        images: ``(z, y, x)`` float32 arrays, already normalised and on the working grid.
        labels: matching integer label arrays.
        patch_size: ``(z, y, x)``.
        fg_fraction: minimum fraction of each batch centred on a foreground voxel (>= 1/3 advised).
        augment: a ``RandomAugment`` or ``None`` for none.
        context_factor: ``(z, y, x)`` factor of the two-scale context crop, or ``None``.

    Raises:
        InputError: an image and its label differ in shape.
    """

    def __init__(
        self,
        images: Sequence[np.ndarray],
        labels: Sequence[np.ndarray],
        patch_size: Sequence[int],
        fg_fraction: float = 0.4,
        augment: RandomAugment | None = None,
        context_factor: Sequence[int] | None = None,
    ) -> None:
        for i, (image, label) in enumerate(zip(images, labels)):
            if image.shape != label.shape:
                raise InputError(
                    f"case #{i}", f"image {image.shape} and label {label.shape} differ", "resample both to one grid"
                )
        self.images, self.labels = list(images), list(labels)
        self.patch_size: Triple = tuple(int(s) for s in patch_size)  # type: ignore[assignment]
        self.fg_fraction = fg_fraction
        self.augment = augment
        self.context_factor = tuple(int(f) for f in context_factor) if context_factor else None
        # Flat indices of every foreground class per case (class-balanced centre sampling).
        self.class_voxels = [
            {int(v): np.flatnonzero(label == v) for v in np.unique(label) if v != 0} for label in self.labels
        ]

    def _center(self, case: int, foreground: bool, rng: np.random.Generator) -> Triple:
        shape = self.images[case].shape
        classes = self.class_voxels[case]
        if foreground and classes:
            voxels = classes[int(rng.choice(sorted(classes)))]
            return tuple(int(i) for i in np.unravel_index(voxels[rng.integers(len(voxels))], shape))  # type: ignore[return-value]
        return tuple(int(rng.integers(n)) for n in shape)  # type: ignore[return-value]

    def sample(
        self, rng: np.random.Generator, foreground: bool
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, AugmentParams]:
        """One augmented patch: ``(image, label, context or None, params)``."""
        case = int(rng.integers(len(self.images)))
        center = self._center(case, foreground, rng)
        params = self.augment.sample(rng) if self.augment else AugmentParams()
        size = self.patch_size
        if params.rotation_deg or params.scale != 1.0:
            # Crop a margin so that rotated corners hold real voxels, then cut the patch back out.
            size = (size[0], math.ceil(size[1] * 1.5), math.ceil(size[2] * 1.5))
        image = crop_patch(self.images[case], center, size)
        label = crop_patch(self.labels[case], center, size)
        image, label = apply_augment(image, label, params)
        if size != self.patch_size:
            mid = tuple(s // 2 for s in size)
            image, label = crop_patch(image, mid, self.patch_size), crop_patch(label, mid, self.patch_size)
        context = None
        if self.context_factor:
            # Same centre, so the same flips, rotation and intensity change apply (noise excepted).
            context = context_crop(self.images[case], center, self.patch_size, self.context_factor)
            context, _ = apply_augment(context, np.zeros(context.shape, np.uint8), replace(params, noise_std=0.0))
        return image, label, context, params

    def batch(self, rng: np.random.Generator, batch_size: int) -> Batch:
        """A batch whose first ``ceil(fg_fraction * batch_size)`` patches are foreground-centred."""
        n_fg = math.ceil(self.fg_fraction * batch_size)
        items = [self.sample(rng, foreground=i < n_fg) for i in range(batch_size)]
        images = np.stack([it[0] for it in items])[:, None].astype(np.float32)
        labels = np.stack([it[1] for it in items]).astype(np.int64)
        context = np.stack([cast(np.ndarray, it[2]) for it in items])[:, None] if self.context_factor else None
        fg = np.arange(batch_size) < n_fg
        return Batch(images, labels, context, fg, tuple(it[3] for it in items))
