"""A learned shape prior for label maps: plausibility score and refinement (Post-DAE).

A ``ShapeAutoencoder3D`` trained to map corrupted label maps back to clean ones has learned which
shapes are plausible. For a segmentation ``S`` cropped around its largest foreground component
and resampled to the network's fixed grid, the reconstruction ``R = AE(S)`` (mapped back to the
input grid, background outside the crop) gives the reconstruction Dice

    d(S) = mean over structures c of Dice(S == c, R == c),
    Dice(A, B) = 2 |A & B| / (|A| + |B|),

low when ``S`` holds shapes the autoencoder cannot reproduce (swapped classes, gross errors).
``score`` combines it with volumes of stray components, enclosed background, exposed walls,
dents in the outline and blobs of confident disagreement with ``R`` (``deconvseg.pipeline.autoencoding.score``),
which catch holes and islands too small to move ``d``. ``refine(S, classes)`` replaces each listed structure by
its reconstruction, whole when ``d`` of that structure is very low, else only where they
disagree in bulk (Larrazabal et al., "Post-DAE", IEEE TMI 2020; Oktay et al., "Anatomically
Constrained Neural Networks", IEEE TMI 2018).
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cc3d
import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch.nn import functional as F

from deconvseg.models.autoencoders import ShapeAutoencoder3D
from deconvseg.pipeline.autoencoding.score import (
    Plausibility,
    PlausibilityConfig,
    Spacing,
    confident_disagreement,
    plausibility,
)
from deconvseg.pipeline.config import Settings
from deconvseg.pipeline.errors import InputError
from deconvseg.pipeline.files import FILE_MODE, atomic_folder

log = logging.getLogger(__name__)

Box = tuple[tuple[int, int], tuple[int, int], tuple[int, int]]


class ShapeGridConfig(Settings):
    """How a label map is placed on the autoencoder's grid.

    Attributes:
        grid: ``(z, y, x)`` grid size (each side divisible by 8).
        n_classes: label values ``0..n_classes-1``, background included.
        margin: in-plane margin on each side, as a fraction of the larger in-plane extent.
        z_margin: slices added above and below the foreground.
    """

    grid: tuple[int, int, int] = (16, 64, 64)
    n_classes: int = 4
    margin: float = 0.15
    z_margin: int = 1


def largest_component_box(
    labels: np.ndarray, config: ShapeGridConfig, jitter: float = 0.0, rng: np.random.Generator | None = None
) -> Box | None:
    """Box ``((z0, z1), (y0, y1), (x0, x1))`` around the largest foreground component.

    The in-plane box is square (the larger extent plus ``margin`` on each side) so that the
    resampling keeps the aspect ratio; it may reach beyond the array (read as background).
    ``jitter`` (training augmentation) shifts the centre and scales the side by up to that fraction.

    Returns:
        The box, or ``None`` when the map has no foreground.
    """
    if not np.any(labels):
        return None
    components = cc3d.connected_components(labels > 0, connectivity=26)
    largest = np.argmax(np.bincount(components.ravel())[1:]) + 1
    idx = np.argwhere(components == largest)
    lo, hi = idx.min(axis=0), idx.max(axis=0) + 1
    centre = (lo[1:] + hi[1:]) / 2.0
    side = max(hi[1:] - lo[1:]) * (1.0 + 2.0 * config.margin)
    if jitter and rng is not None:
        centre = centre + rng.uniform(-jitter, jitter, size=2) * side
        side *= 1.0 + rng.uniform(-jitter, jitter)
    y0, x0 = np.round(centre - side / 2.0).astype(int)
    s = max(int(round(side)), 2)
    return (
        (int(lo[0]) - config.z_margin, int(hi[0]) + config.z_margin),
        (int(y0), int(y0) + s),
        (int(x0), int(x0) + s),
    )


def _source_index(start: int, stop: int, n: int) -> np.ndarray:
    """Nearest source index of each of ``n`` grid cells spanning ``[start, stop)``."""
    return start + np.floor((np.arange(n) + 0.5) * (stop - start) / n).astype(int)


def crop_to_grid(labels: np.ndarray, box: Box, grid: Sequence[int]) -> np.ndarray:
    """Resample the box of a label map to ``grid`` by nearest neighbour (outside = background)."""
    index = [_source_index(a, b, n) for (a, b), n in zip(box, grid)]
    valid = [(i >= 0) & (i < size) for i, size in zip(index, labels.shape)]
    clipped = [np.clip(i, 0, size - 1) for i, size in zip(index, labels.shape)]
    out = labels[np.ix_(*clipped)].astype(np.uint8)
    out[~(valid[0][:, None, None] & valid[1][None, :, None] & valid[2][None, None, :])] = 0
    return out


def one_hot(grid_labels: np.ndarray | torch.Tensor, n_classes: int) -> torch.Tensor:
    """``(n, z, y, x)`` integer labels -> ``(n, n_classes, z, y, x)`` float32."""
    labels = torch.as_tensor(np.asarray(grid_labels), dtype=torch.long)
    return F.one_hot(labels, n_classes).permute(0, 4, 1, 2, 3).float()


def grid_to_probabilities(logits: torch.Tensor, box: Box, shape: Sequence[int]) -> np.ndarray:
    """Map grid logits ``(C, z, y, x)`` to class probabilities ``(C, *shape)`` (background outside the box).

    The logits are resized trilinearly to the box, then turned into probabilities by softmax.
    """
    extent = [b - a for a, b in box]
    resized = F.interpolate(logits[None], size=extent, mode="trilinear", align_corners=False)[0]
    crop = torch.softmax(resized, dim=0).numpy()
    out = np.zeros((logits.shape[0], *shape), dtype=np.float32)
    out[0] = 1.0
    src = tuple(slice(max(-a, 0), e - max(b - n, 0)) for (a, b), e, n in zip(box, extent, shape))
    dst = tuple(slice(max(a, 0), min(b, n)) for (a, b), n in zip(box, shape))
    out[(slice(None), *dst)] = crop[(slice(None), *src)]
    return out


def grid_to_labels(logits: torch.Tensor, box: Box, shape: Sequence[int]) -> np.ndarray:
    """Map grid logits ``(C, z, y, x)`` back into a label map of ``shape`` (background outside the box)."""
    return grid_to_probabilities(logits, box, shape).argmax(0).astype(np.uint8)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two boolean masks; 1.0 when both are empty."""
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * float(np.logical_and(a, b).sum()) / total


class ShapeGuard:
    """A trained shape autoencoder with its grid placement: scores and refines label maps.

    Args:
        model: trained ``ShapeAutoencoder3D``.
        config: grid placement used in training.
        classes: structures that ``__call__`` replaces (the per-class plan validated on data);
            empty = all, so that a caller such as ``deconvseg.pipeline.postprocess`` can decide per class.
        plausibility: how the score combines its terms, and the QA threshold.
    """

    def __init__(
        self,
        model: ShapeAutoencoder3D,
        config: ShapeGridConfig,
        classes: Sequence[int] = (),
        plausibility: PlausibilityConfig = PlausibilityConfig(),
    ) -> None:
        self.model = model.eval()
        self.config = config
        self.classes = tuple(classes)
        self.plausibility = plausibility

    @torch.no_grad()
    def probabilities(self, labels: np.ndarray) -> np.ndarray:
        """The autoencoder's class probabilities ``(n_classes, *labels.shape)`` (float32, background outside the crop).

        Raises:
            ValueError: ``labels`` is not 3D or holds values outside ``0..n_classes-1``.
        """
        if labels.ndim != 3 or labels.min(initial=0) < 0 or labels.max(initial=0) >= self.config.n_classes:
            raise ValueError(
                f"shape guard expects a 3D label map with values 0..{self.config.n_classes - 1}, got shape "
                f"{labels.shape} and values up to {labels.max(initial=0)}; map the labels to the guard's table first"
            )
        box = largest_component_box(labels, self.config)
        if box is None:
            out = np.zeros((self.config.n_classes, *labels.shape), dtype=np.float32)
            out[0] = 1.0
            return out
        grid = crop_to_grid(labels, box, self.config.grid)
        logits = self.model(one_hot(grid[None], self.config.n_classes))[0]
        return grid_to_probabilities(logits, box, labels.shape)

    def reconstruct(self, labels: np.ndarray) -> np.ndarray:
        """The autoencoder's version of ``labels`` on the input grid (a new uint8 array)."""
        return self.probabilities(labels).argmax(0).astype(np.uint8)

    def class_scores(self, labels: np.ndarray, reconstruction: np.ndarray | None = None) -> dict[int, float]:
        """Dice between each structure ``1..n_classes-1`` and its reconstruction."""
        recon = self.reconstruct(labels) if reconstruction is None else reconstruction
        return {c: dice(labels == c, recon == c) for c in range(1, self.config.n_classes)}

    def assess(self, labels: np.ndarray, spacing: Spacing) -> Plausibility:
        """Every term of the plausibility score (``deconvseg.pipeline.autoencoding.score``) and the QA flag.

        Args:
            labels: label map ``[z, y, x]``.
            spacing: voxel size ``(x, y, z)`` in mm (the volume terms are in mL).
        """
        return plausibility(labels, self.probabilities(labels), spacing, self.plausibility)

    def score(self, labels: np.ndarray, spacing: Spacing) -> float:
        """Plausibility in [0, 1] (0.0 for an empty map): ``assess(labels, spacing).score``."""
        return self.assess(labels, spacing).score

    def refine(self, labels: np.ndarray, classes: Sequence[int] | None = None) -> np.ndarray:
        """Replace each structure in ``classes`` (default: all) by its reconstruction, whole or in bulk only.

        A structure whose reconstruction Dice is below ``plausibility.replace_below`` is replaced
        whole (the autoencoder disagrees with all of it: swapped classes). Otherwise only its
        confident disagreement after a one-voxel in-plane opening changes (the blobs of
        ``disagreement_ml``: holes, islands), and the thin band along the boundaries, where the
        autoencoder is coarser than the map, is kept. Voxels leaving a structure become
        background; voxels joining it take its value, whatever they held. Returns a new array.
        """
        classes = range(1, self.config.n_classes) if classes is None else classes
        probs = self.probabilities(labels)
        recon = probs.argmax(0)
        regions = {}
        for c in classes:
            seg = labels == c
            whole = dice(seg, recon == c) < self.plausibility.replace_below
            regions[c] = (
                np.ones_like(seg) if whole else confident_disagreement(seg, probs[c], self.plausibility.confidence)
            )
        out = labels.copy()
        for c, region in regions.items():
            out[region & (labels == c) & (recon != c)] = 0
        for c, region in regions.items():
            out[region & (recon == c)] = c
        return out

    def __call__(self, labels: np.ndarray) -> np.ndarray:
        """The post-processing hook (a ``labels -> labels`` prior): refine ``self.classes`` (empty = all)."""
        return self.refine(labels, self.classes or None)


def save_shape_guard(folder: str | Path, guard: ShapeGuard, arch_kwargs: dict, meta: dict) -> Path:
    """Write ``weights.safetensors`` + ``model.json`` into ``folder`` atomically (temp sibling, then rename).

    Args:
        folder: destination; its weights and ``model.json`` are replaced if it exists, its other
            plain files (the model card) are kept.
        guard: the trained guard.
        arch_kwargs: the ``ShapeAutoencoder3D`` constructor arguments.
        meta: extra JSON-able fields (labels, metrics, training).
    """
    folder = Path(folder)
    with atomic_folder(folder) as tmp:
        save_file({k: v.contiguous() for k, v in guard.model.state_dict().items()}, str(tmp / "weights.safetensors"))
        info = {
            "arch": "shape_autoencoder3d",
            "arch_kwargs": arch_kwargs,
            "grid_config": guard.config.model_dump(mode="json"),
            "classes": list(guard.classes),
            "plausibility": guard.plausibility.model_dump(mode="json"),
            **meta,
        }
        (tmp / "model.json").write_text(json.dumps(info, indent=2) + "\n")
        for path in folder.glob("*") if folder.is_dir() else ():  # keep the card and other files
            if path.is_file() and not (tmp / path.name).exists():
                shutil.copy2(path, tmp / path.name)
        for path in tmp.iterdir():
            path.chmod(FILE_MODE)
    return folder


def load_shape_guard(folder: str | Path) -> ShapeGuard:
    """Read a guard written by ``save_shape_guard`` (safetensors, never pickle).

    A ``model.json`` without ``plausibility`` (written before the score had settings) gets the
    ``PlausibilityConfig`` defaults, which never flag.

    Raises:
        InputError: the folder lacks ``model.json``/``weights.safetensors`` or they do not match.
    """
    folder = Path(folder)
    meta_path, weights_path = folder / "model.json", folder / "weights.safetensors"
    if not meta_path.is_file() or not weights_path.is_file():
        raise InputError(folder, "no model.json + weights.safetensors", "pass a folder written by save_shape_guard")
    meta = json.loads(meta_path.read_text())
    if meta.get("arch") != "shape_autoencoder3d":
        raise InputError(
            meta_path, f"arch is {meta.get('arch')!r}, not 'shape_autoencoder3d'", "pass a shape-guard folder"
        )
    kwargs: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in meta["arch_kwargs"].items()}
    model = ShapeAutoencoder3D(**kwargs)
    try:
        model.load_state_dict(load_file(str(weights_path)))
    except RuntimeError as err:
        raise InputError(weights_path, f"weights do not fit the architecture ({err})", "retrain or re-export") from err
    plausibility_config = PlausibilityConfig(**meta.get("plausibility", {}))
    return ShapeGuard(model, ShapeGridConfig(**meta["grid_config"]), meta.get("classes", ()), plausibility_config)
