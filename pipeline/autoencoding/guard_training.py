"""Train the shape guard (a denoising ``ShapeAutoencoder3D`` on label maps) and measure it.

Training follows Post-DAE (Larrazabal et al., IEEE TMI 2020): clean training label maps are
placed on the fixed grid (with a small random shift/scale of the crop), corrupted on the fly
(holes, islands, swapped classes; ``deconvseg.pipeline.autoencoding.corruption``), and the network learns to
output the clean map. Loss = cross-entropy + (1 - mean soft Dice of the structures).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from torch.nn import functional as F

from deconvseg.models.autoencoders import ShapeAutoencoder3D
from deconvseg.pipeline.autoencoding.corruption import KINDS, corrupt_labels
from deconvseg.pipeline.autoencoding.fit import AutoencoderTrainConfig, ProgressFn, TrainHistory, train_autoencoder
from deconvseg.pipeline.autoencoding.guard import (
    ShapeGridConfig,
    ShapeGuard,
    crop_to_grid,
    dice,
    largest_component_box,
    one_hot,
)
from deconvseg.pipeline.autoencoding.score import Plausibility, PlausibilityConfig, Spacing, combine
from deconvseg.pipeline.config import Settings

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
        plausibility: the score's settings given to the trained guard (``calibrate_plausibility``
            then chooses its volume scale and weight on the training maps).
    """

    grid: ShapeGridConfig = ShapeGridConfig()
    code_size: int = 64
    bottleneck: Literal["dense", "spatial"] = "dense"
    channels: tuple[int, int, int] = (8, 16, 32)
    copies: int = 2
    jitter: float = 0.08
    clean_fraction: float = 0.25
    train: AutoencoderTrainConfig = AutoencoderTrainConfig(epochs=15, batch_size=4, lr=5e-3)
    plausibility: PlausibilityConfig = PlausibilityConfig()


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
    return ShapeGuard(model, config.grid, plausibility=config.plausibility), history


def roc_auc(positive: Sequence[float], negative: Sequence[float]) -> float:
    """Area under the ROC curve for "positive scores higher": P(p > n) + P(p = n) / 2 (Mann-Whitney U)."""
    p = np.asarray(positive, dtype=float)[:, None]
    n = np.asarray(negative, dtype=float)[None, :]
    return float(((p > n).sum() + 0.5 * (p == n).sum()) / (p.size * n.size))


def corrupted_copies(
    references: Sequence[np.ndarray], seed: int = 0, severity: float = 1.0
) -> dict[str, list[np.ndarray]]:
    """One corrupted copy of every map per kind, ``{"hole": [...], "island": [...], "swap": [...]}``."""
    rng = np.random.default_rng(seed)
    return {kind: [corrupt_labels(ref, kind, rng, severity) for ref in references] for kind in KINDS}


def plausibility_study(
    guard: ShapeGuard, references: Sequence[np.ndarray], spacing: Spacing, seed: int = 0, severity: float = 1.0
) -> dict:
    """Scores of reference maps against corrupted copies (one per kind and map) and ROC AUCs.

    Args:
        guard: the shape guard (its ``plausibility`` settings make the score).
        references: expert label maps ``[z, y, x]``.
        spacing: their voxel size ``(x, y, z)`` in mm.
        seed: seed of the corruptions.
        severity: corruption size (``deconvseg.pipeline.autoencoding.corruption.corrupt_labels``).

    Returns:
        ``{"reference": [...], "<kind>": [...], "auc": {"<kind>": a, "all": a}, "severity": s}``.
    """
    result: dict = {"reference": [guard.score(ref, spacing) for ref in references], "severity": severity, "auc": {}}
    for kind, maps in corrupted_copies(references, seed, severity).items():
        result[kind] = [guard.score(m, spacing) for m in maps]
        result["auc"][kind] = roc_auc(result["reference"], result[kind])
    result["auc"]["all"] = roc_auc(result["reference"], [s for kind in KINDS for s in result[kind]])
    return result


def _terms(p: Plausibility) -> tuple[dict[int, float], dict[int, float], float, float, float, dict[int, float]]:
    """The arguments of ``combine`` held by ``p``."""
    return p.dice, p.stray_ml, p.enclosed_background_ml, p.exposed_wall_ml, p.concavity_ml, p.disagreement_ml


def calibrate_plausibility(
    guard: ShapeGuard,
    references: Sequence[np.ndarray],
    spacing: Spacing,
    seed: int = 0,
    scales_ml: Sequence[float] = (1.0, 2.0, 5.0, 10.0, 20.0),
    wall_weights: Sequence[float] = (0.0, 1.0, 5.0, 10.0),
    concavity_weights: Sequence[float] = (0.0, 0.25, 0.5, 1.0),
    weights: Sequence[float] = (0.0, 0.02, 0.05, 0.1, 0.2, 0.5),
    tolerance: float = 0.005,
) -> tuple[PlausibilityConfig, dict[str, float]]:
    """Choose ``volume_scale_ml`` and the weights of the score's terms on training maps.

    Every point of the grid is scored on the references and one corrupted copy per kind (severity
    1). Among the points whose worst-kind ROC AUC is within ``tolerance`` of the best worst-kind
    AUC (closer is noise at a few hundred maps), the one with the highest AUC over all kinds
    wins (ties: the earlier point). The guard's confidence, walled classes and flag threshold are
    kept. Call it with training maps, never with the maps the AUC is reported on.

    Returns:
        The chosen settings and their AUCs on these maps (``{"hole", "island", "swap", "all"}``).
    """
    corrupted = corrupted_copies(references, seed)
    terms = {
        kind: [guard.assess(m, spacing) for m in maps]
        for kind, maps in {"reference": list(references), **corrupted}.items()
    }
    grid = []
    for scale, wall, concave, weight in itertools.product(scales_ml, wall_weights, concavity_weights, weights):
        update = {
            "volume_scale_ml": scale,
            "wall_weight": wall,
            "concavity_weight": concave,
            "disagreement_weight": weight,
        }
        config = guard.plausibility.model_copy(update=update)
        scores = {kind: [combine(*_terms(p), config) for p in ps] for kind, ps in terms.items()}
        auc: dict[str, float] = {kind: roc_auc(scores["reference"], scores[kind]) for kind in KINDS}
        auc["all"] = roc_auc(scores["reference"], [v for kind in KINDS for v in scores[kind]])
        grid.append((config, auc))
    worst = max(min(auc[kind] for kind in KINDS) for _, auc in grid)
    near = [(config, auc) for config, auc in grid if min(auc[kind] for kind in KINDS) >= worst - tolerance]
    return max(near, key=lambda item: item[1]["all"])


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
