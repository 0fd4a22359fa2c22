"""Train the Xu et al. deblurring CNN on patches of scikit-image's bundled images (never the held-out set).

Each training image is degraded ``copies`` times (independent noise) once, up front; every step then
draws random aligned crops (``patch + model.shrink`` pixels of the degraded image, ``patch`` pixels of
the reference) with random flips/transposes. Loss: mean squared error (what PSNR measures). Adam, the
deconvolution layers at ``lr_deconv`` (fine-tuning the k† initialisation), the rest at ``lr``, both on a
cosine decay over the budget; training stops after ``max_seconds`` of process CPU time (a budget that
does not depend on how busy a shared machine is), ``max_wall_seconds`` of wall time or ``max_steps``, whichever comes first.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Literal

import numpy as np
import torch

from models.deblur_cnn import DeblurCNN
from pipeline.config import Settings
from pipeline.deblur import kernel_svd, pseudo_inverse_kernel
from pipeline.deblur_data import HELD_OUT, TRAINING, load_grey
from pipeline.degrade import DEGRADATIONS

logger = logging.getLogger(__name__)

__all__ = ["DeblurTrainConfig", "build_initialised_model", "train_deblur_cnn"]


class DeblurTrainConfig(Settings):
    """Training settings; ``configs/deblur-train-*.yaml`` override them."""

    degradation: Literal["xu", "gaussian"] = "xu"
    nsr: float = 0.03
    support_energy: float = 0.9999
    max_length: int = 121
    rank: int = 16
    hidden: int = 48
    outlier_kernel: int = 8
    out_kernel: int = 8
    patch: int = 32
    batch: int = 16
    copies: int = 4
    max_crop: int = 640
    lr: float = 1e-3
    lr_deconv: float = 1e-4
    max_seconds: float = 720.0
    max_wall_seconds: float = 3600.0
    max_steps: int = 100_000
    seed: int = 0
    threads: int = 1
    out: str = "models/weights/deblur/xu"


def build_initialised_model(cfg: DeblurTrainConfig) -> DeblurCNN:
    """A ``DeblurCNN`` whose deconvolution layers reproduce the truncated k† of the config's PSF."""
    psf = DEGRADATIONS[cfg.degradation]().psf
    kdag = pseudo_inverse_kernel(psf, cfg.nsr, energy=cfg.support_energy, max_size=cfg.max_length)
    sep = kernel_svd(kdag, rank=min(cfg.rank - 1, kdag.shape[0]))  # + 1 DC-restoring term
    model = DeblurCNN(rank=sep.rank, length=kdag.shape[0], hidden=cfg.hidden, outlier_kernel=cfg.outlier_kernel,
                      out_kernel=cfg.out_kernel, residual=True)
    model.init_from_separable(sep.u, sep.s, sep.v)
    return model


def _training_pairs(cfg: DeblurTrainConfig, rng: np.random.Generator) -> list[tuple[np.ndarray, np.ndarray]]:
    """Degraded/reference pairs of every training image (cropped to ``max_crop``), ``copies`` noise draws each."""
    degrade = DEGRADATIONS[cfg.degradation]()
    pairs = []
    for name in TRAINING:
        if name in HELD_OUT:  # the lists are disjoint by construction; keep it that way
            raise ValueError(f"training image {name} is in the held-out set")
        image = load_grey(name)
        h, w = min(image.shape[0], cfg.max_crop), min(image.shape[1], cfg.max_crop)
        y0, x0 = (image.shape[0] - h) // 2, (image.shape[1] - w) // 2
        for _ in range(cfg.copies):
            degraded, reference = degrade(image[y0 : y0 + h, x0 : x0 + w], rng)
            pairs.append((degraded.astype(np.float32), reference.astype(np.float32)))
    return pairs


def _batch(
    pairs: list, size: int, patch: int, shrink: int, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random aligned crops: inputs ``(size, 1, patch + shrink, ...)``, targets ``(size, 1, patch, patch)``."""
    margin = shrink // 2
    inputs, targets = [], []
    for _ in range(size):
        degraded, reference = pairs[rng.integers(len(pairs))]
        y0 = rng.integers(margin, degraded.shape[0] - margin - patch + 1)
        x0 = rng.integers(margin, degraded.shape[1] - margin - patch + 1)
        a = degraded[y0 - margin : y0 + patch + margin, x0 - margin : x0 + patch + margin]
        b = reference[y0 : y0 + patch, x0 : x0 + patch]
        if rng.random() < 0.5:
            a, b = a[:, ::-1], b[:, ::-1]
        if rng.random() < 0.5:
            a, b = a.T, b.T
        inputs.append(a.copy())
        targets.append(b.copy())
    return torch.from_numpy(np.stack(inputs))[:, None], torch.from_numpy(np.stack(targets))[:, None]


def train_deblur_cnn(cfg: DeblurTrainConfig) -> tuple[DeblurCNN, dict[str, Any]]:
    """Train a ``DeblurCNN`` per ``cfg``; returns the model (eval mode) and metadata for ``model.json``."""
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    model = build_initialised_model(cfg)
    pairs = _training_pairs(cfg, rng)
    deconv = list(model.rows.parameters()) + list(model.cols.parameters())
    optimiser = torch.optim.Adam(
        [{"params": deconv, "lr": cfg.lr_deconv}, {"params": model.outlier.parameters(), "lr": cfg.lr}]
    )
    start, wall, step, losses = time.process_time(), time.perf_counter(), 0, []
    model.train()
    while (progress := max(step / cfg.max_steps, (time.process_time() - start) / cfg.max_seconds,
                            (time.perf_counter() - wall) / cfg.max_wall_seconds)) < 1:
        decay = 0.5 * (1 + np.cos(np.pi * progress))
        for group, base in zip(optimiser.param_groups, (cfg.lr_deconv, cfg.lr)):
            group["lr"] = base * decay
        inputs, targets = _batch(pairs, cfg.batch, cfg.patch, model.shrink, rng)
        loss = torch.nn.functional.mse_loss(model(inputs), targets)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
        step += 1
        if step % 100 == 0:
            logger.info("step %d  mse %.6f  (%.0f CPU s)", step, np.mean(losses[-100:]), time.process_time() - start)
    seconds, wall = time.process_time() - start, time.perf_counter() - wall
    meta = {
        "degradation": cfg.degradation,
        "training": {
            "images": list(TRAINING), "held_out": list(HELD_OUT), "steps": step, "cpu_seconds": round(seconds, 1),
            "wall_seconds": round(wall, 1),
            "final_mse": float(np.mean(losses[-100:])) if losses else None, "config": cfg.model_dump(),
        },
    }
    return model.eval(), meta
