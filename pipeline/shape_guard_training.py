"""Train the shape guard (a denoising ``ShapeAutoencoder3D`` on label maps) and measure it.

Training follows Post-DAE (Larrazabal et al., IEEE TMI 2020): clean training label maps are
placed on the fixed grid (with a small random shift/scale of the crop), corrupted on the fly
(holes, islands, swapped classes; ``pipeline.label_corruption``), and the network learns to
output the clean map. Loss = cross-entropy + (1 - mean soft Dice of the structures).
"""

from __future__ import annotations

import logging
from typing import Literal, Sequence

import numpy as np
import torch
from torch.nn import functional as F

from models.autoencoders import ShapeAutoencoder3D
from pipeline.autoencoding import AutoencoderTrainConfig, ProgressFn, TrainHistory, train_autoencoder
from pipeline.config import Settings
from pipeline.label_corruption import KINDS, corrupt_labels
from pipeline.shape_guard import ShapeGridConfig, ShapeGuard, crop_to_grid, dice, largest_component_box, one_hot

log = logging.getLogger(__name__)


class ShapeGuardTrainConfig(Settings):
    """Shape-guard training settings.

    Attributes:
        grid: grid placement (size, margins, number of classes).
        code_size: bottleneck length (dense) or channels (spatial) of the autoencoder.
        bottleneck: ``"dense"`` or ``"spatial"`` (see ``ShapeAutoencoder3D``).
        channels: features of its three stages.
        copies: randomly shifted/scaled crops per training map.
        jitter: largest relative shift/scale of a crop.
        clean_fraction: share of training inputs left uncorrupted.
        train: optimiser settings (epochs, batch size, learning rate, seed, threads).
    """

    grid: ShapeGridConfig = ShapeGridConfig()
    code_size: int = 64
    bottleneck: Literal["dense", "spatial"] = "dense"
    channels: tuple[int, int, int] = (8, 16, 32)
    copies: int = 2
    jitter: float = 0.08
    clean_fraction: float = 0.25
    train: AutoencoderTrainConfig = AutoencoderTrainConfig(epochs=15, batch_size=4, lr=5e-3)


def grid_samples(label_maps: Sequence[np.ndarray], config: ShapeGuardTrainConfig, seed: int = 0) -> np.ndarray:
    """``(n, z, y, x)`` uint8 grids: ``copies`` jittered crops of every map with foreground."""
    rng = np.random.default_rng(seed)
    grids = []
    for labels in label_maps:
        for copy in range(config.copies):
            box = largest_component_box(labels, config.grid, config.jitter if copy else 0.0, rng)
            if box is not None:
                grids.append(crop_to_grid(labels, box, config.grid.grid))
    return np.stack(grids)


def shape_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy + (1 - mean soft Dice over the non-background classes)."""
    target = target.long()
    probs = torch.softmax(logits, dim=1)
    onehot = F.one_hot(target, logits.shape[1]).permute(0, 4, 1, 2, 3).float()
    dims = (0, 2, 3, 4)
    soft_dice = (2 * (probs * onehot).sum(dims) + 1.0) / (probs.sum(dims) + onehot.sum(dims) + 1.0)
    return F.cross_entropy(logits, target) + 1.0 - soft_dice[1:].mean()


def corrupting_input(config: ShapeGuardTrainConfig):
    """``make_input`` for the training loop: corrupt most grids, then one-hot encode."""

    def make_input(batch: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        out = []
        for grid in batch.numpy():
            if rng.random() >= config.clean_fraction:
                for _ in range(rng.integers(1, 3)):
                    grid = corrupt_labels(grid, KINDS[rng.integers(len(KINDS))], rng, rng.uniform(0.5, 1.5))
            out.append(grid)
        return one_hot(np.stack(out), config.grid.n_classes)

    return make_input


def train_shape_guard(
    label_maps: Sequence[np.ndarray], config: ShapeGuardTrainConfig, progress: ProgressFn | None = None
) -> tuple[ShapeGuard, TrainHistory]:
    """Train a denoising shape autoencoder on clean label maps ``[z, y, x]``.

    Returns:
        The guard (all structures enabled for ``refine``, none yet for ``__call__``) and the history.
    """
    torch.manual_seed(config.train.seed)
    grids = torch.from_numpy(grid_samples(label_maps, config, config.train.seed))
    model = ShapeAutoencoder3D(
        config.grid.n_classes, config.grid.grid, config.channels, config.code_size, config.bottleneck
    )
    history = train_autoencoder(
        model, grids, config.train, loss=shape_loss, make_input=corrupting_input(config), progress=progress
    )
    return ShapeGuard(model, config.grid), history


def roc_auc(positive: Sequence[float], negative: Sequence[float]) -> float:
    """Area under the ROC curve for "positive scores higher": P(p > n) + P(p = n) / 2 (Mann-Whitney U)."""
    p = np.asarray(positive, dtype=float)[:, None]
    n = np.asarray(negative, dtype=float)[None, :]
    return float(((p > n).sum() + 0.5 * (p == n).sum()) / (p.size * n.size))


def plausibility_study(
    guard: ShapeGuard, references: Sequence[np.ndarray], seed: int = 0, severity: float = 1.0
) -> dict:
    """Scores of reference maps against corrupted copies (one per kind and map) and ROC AUCs.

    Returns:
        ``{"reference": [...], "<kind>": [...], "auc": {"<kind>": a, "all": a}, "severity": s}``.
    """
    rng = np.random.default_rng(seed)
    result: dict = {"reference": [guard.score(ref) for ref in references], "severity": severity, "auc": {}}
    for kind in KINDS:
        result[kind] = [guard.score(corrupt_labels(ref, kind, rng, severity)) for ref in references]
        result["auc"][kind] = roc_auc(result["reference"], result[kind])
    result["auc"]["all"] = roc_auc(result["reference"], [s for kind in KINDS for s in result[kind]])
    return result


def refinement_study(
    guard: ShapeGuard, references: Sequence[np.ndarray], segmentations: Sequence[np.ndarray]
) -> dict[int, dict[str, float]]:
    """Per structure: mean Dice against the reference before and after ``refine`` of that structure alone.

    Returns:
        ``{class: {"before": d0, "after": d1, "gain": d1 - d0, "keep": d1 > d0}}``.
    """
    out: dict[int, dict[str, float]] = {}
    for c in range(1, guard.config.n_classes):
        before = [dice(seg == c, ref == c) for ref, seg in zip(references, segmentations)]
        after = [dice(guard.refine(seg, [c]) == c, ref == c) for ref, seg in zip(references, segmentations)]
        b, a = float(np.mean(before)), float(np.mean(after))
        out[c] = {"before": b, "after": a, "gain": a - b, "keep": a > b}
    return out
