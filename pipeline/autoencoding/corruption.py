"""Implausible versions of a label map: holes, islands and swapped classes.

They train the denoising shape autoencoder (Post-DAE, Larrazabal et al., IEEE TMI 2020, corrupt
clean label maps and learn to undo the damage) and test the plausibility score. Two more errors,
a structure missing from its first or last slice and a structure grown into the background
(``OTHER_KINDS``), are kept out of training and calibration: they test the score on damage it
was not tuned to. Every function
returns a new array and leaves its input untouched. Sizes are fractions of the affected
structure, so one severity means the same on a 64^2 grid and on a 256^2 slice.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from scipy import ndimage

CorruptionKind = Literal["hole", "island", "swap", "end_slice", "dilation"]
KINDS: tuple[CorruptionKind, ...] = ("hole", "island", "swap")
OTHER_KINDS: tuple[CorruptionKind, ...] = ("end_slice", "dilation")


def _ellipsoid(shape: tuple[int, ...], centre: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """Boolean mask of the voxels inside an axis-aligned ellipsoid ``[z, y, x]``."""
    grids = np.ogrid[tuple(slice(0, n) for n in shape)]
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grids, centre, radii)) <= 1.0


def _pick_class(labels: np.ndarray, rng: np.random.Generator) -> int | None:
    present = [int(v) for v in np.unique(labels) if v != 0]
    return int(rng.choice(present)) if present else None


def _structure_radii(mask: np.ndarray, fraction: float) -> np.ndarray:
    """Radii ``(z, y, x)``: ``fraction`` of the half-extent in-plane, at least one slice through-plane."""
    idx = np.argwhere(mask)
    half = (idx.max(axis=0) - idx.min(axis=0) + 1) / 2.0
    radii = np.maximum(fraction * half, 1.0)
    radii[0] = max(radii[0], 1.0)
    return radii


def add_hole(labels: np.ndarray, rng: np.random.Generator, fraction: float = 0.4) -> np.ndarray:
    """Carve an ellipsoid of background into one structure.

    Args:
        labels: integer label map ``[z, y, x]`` (0 = background).
        rng: random generator (the structure and the centre are drawn from it).
        fraction: hole radius as a fraction of the structure's half-extent per axis.

    Returns:
        A new label map.
    """
    out = labels.copy()
    value = _pick_class(labels, rng)
    if value is None:
        return out
    mask = labels == value
    voxels = np.argwhere(mask)
    centre = voxels[rng.integers(len(voxels))]
    out[_ellipsoid(labels.shape, centre, _structure_radii(mask, fraction)) & mask] = 0
    return out


def add_island(labels: np.ndarray, rng: np.random.Generator, fraction: float = 0.15) -> np.ndarray:
    """Add a disconnected blob of one structure's label in the background.

    The blob's volume is about ``fraction`` of the structure's volume; its centre is a background
    voxel drawn at random, at least one blob radius from the foreground's bounding box where the
    volume allows it.

    Args:
        labels: integer label map ``[z, y, x]``.
        rng: random generator.
        fraction: blob volume over structure volume.

    Returns:
        A new label map.
    """
    out = labels.copy()
    value = _pick_class(labels, rng)
    if value is None:
        return out
    volume = float((labels == value).sum()) * fraction
    depth = min(3.0, labels.shape[0] / 2.0)
    radius_yx = max(np.sqrt(volume / (4.0 / 3.0 * np.pi * depth)), 1.0)
    radii = np.array([depth, radius_yx, radius_yx])
    fg = np.argwhere(labels > 0)
    lo, hi = fg.min(axis=0) - radii, fg.max(axis=0) + radii
    candidates = np.argwhere(labels == 0)
    outside = candidates[np.any((candidates[:, 1:] < lo[1:]) | (candidates[:, 1:] > hi[1:]), axis=1)]
    pool = outside if len(outside) else candidates
    centre = pool[rng.integers(len(pool))]
    out[_ellipsoid(labels.shape, centre, radii) & (labels == 0)] = value
    return out


def swap_classes(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Exchange the values of two structures present in the map (e.g. RV <-> LV).

    Returns:
        A new label map (a copy when fewer than two structures are present).
    """
    present = [int(v) for v in np.unique(labels) if v != 0]
    out = labels.copy()
    if len(present) < 2:
        return out
    a, b = rng.choice(present, size=2, replace=False)
    out[labels == a] = b
    out[labels == b] = a
    return out


def drop_end_slice(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Remove one structure from its first or last slice (a missed basal or apical slice).

    Returns:
        A new label map (those voxels become background).
    """
    out = labels.copy()
    value = _pick_class(labels, rng)
    if value is None:
        return out
    slices = np.flatnonzero((labels == value).any(axis=(1, 2)))
    z = slices[0] if rng.random() < 0.5 else slices[-1]
    out[z][labels[z] == value] = 0
    return out


def dilate_structure(labels: np.ndarray, rng: np.random.Generator, voxels: int = 2) -> np.ndarray:
    """Grow one structure that touches the background in-plane by ``voxels`` into it (over-segmentation).

    Returns:
        A new label map (a copy when no structure touches the background).
    """
    out = labels.copy()
    square = np.ones((1, 3, 3), dtype=bool)
    growth = {
        int(v): ndimage.binary_dilation(labels == v, square, iterations=voxels) & (labels == 0)
        for v in np.unique(labels)
        if v != 0
    }
    touching = [v for v, grown in growth.items() if grown.any()]
    if touching:
        value = touching[rng.integers(len(touching))]
        out[growth[value]] = value
    return out


def corrupt_labels(
    labels: np.ndarray, kind: CorruptionKind, rng: np.random.Generator, severity: float = 1.0
) -> np.ndarray:
    """Apply one corruption; ``severity`` scales the hole radius (0.4), island volume (0.15) and dilation (2 voxels)."""
    if kind == "hole":
        return add_hole(labels, rng, 0.4 * severity)
    if kind == "island":
        return add_island(labels, rng, 0.15 * severity)
    if kind == "swap":
        return swap_classes(labels, rng)
    if kind == "end_slice":
        return drop_end_slice(labels, rng)
    if kind == "dilation":
        return dilate_structure(labels, rng, max(int(round(2 * severity)), 1))
    raise ValueError(f"unknown corruption {kind!r}; use one of {KINDS + OTHER_KINDS}")
