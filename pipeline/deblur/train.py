"""Train the Xu et al. deblurring CNN on patches of scikit-image's bundled images (never the held-out set).

Following Xu et al. (NIPS 2014), who train the two sub-networks separately before fine-tuning them
together, the deconvolution sub-network is set from the SVD of k† and kept fixed here; only the
outlier-rejection sub-network is trained (joint fine-tuning is left out of the CPU budget). Its input, the
deconvolution features, is therefore computed once per degraded training image, which makes a step cost
only the outlier network. k† is rescaled to unit sum (DC gain 1 instead of Wiener's ``1 / (1 + nsr)``):
flat regions then keep their intensity instead of the network having to learn that gain.

Each training image (centre crop of ``max_crop``) is degraded ``copies`` times, each copy under a random
flip/rotation of the sharp image and with independent noise. Every step draws random aligned crops
(``patch + 2 crop`` feature pixels, ``patch`` reference pixels). Loss ``"mse"``: mean squared error over
the batch (default); ``"log_mse"``: the mean over patches of ``log(MSE_patch + 1e-5)``, i.e. minus the mean
patch PSNR up to a factor, which weighs smooth patches far more (for the Xu degradation it gained 2-3 dB on
smooth images and lost 0.5-1 dB on textured ones; see the model card). Adam on a cosine decay over the budget;
training stops after ``max_seconds`` of process CPU time (data preparation included; independent of how busy
a shared machine is) or ``max_steps``.

Device and precision follow ``deconvseg.pipeline.devices`` (as the segmentation trainer): the features are
computed once on the CPU, each batch moves to ``device``, and checkpoints are CPU copies.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable
from typing import Any, Literal

import numpy as np
import torch

from deconvseg.models.deblur_cnn import DeblurCNN
from deconvseg.pipeline.config import Settings
from deconvseg.pipeline.deblur.data import HELD_OUT, TRAINING, load_grey
from deconvseg.pipeline.deblur.degrade import DEGRADATIONS
from deconvseg.pipeline.deblur.filters import kernel_svd, pseudo_inverse_kernel
from deconvseg.pipeline.devices import Precision, amp_policy, resolve_device

logger = logging.getLogger(__name__)

__all__ = ["DeblurTrainConfig", "build_initialised_model", "train_deblur_cnn"]

Checkpoint = Callable[[DeblurCNN, dict[str, Any]], object]


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
    patch: int = 48
    batch: int = 16
    copies: int = 4
    max_crop: int = 640
    lr: float = 1e-3
    loss: Literal["mse", "log_mse"] = "mse"
    max_seconds: float = 720.0
    max_steps: int = 100_000
    checkpoint_steps: int = 0
    seed: int = 0
    threads: int = 1  # torch threads, set by the CLI
    device: str = "auto"  # auto | cpu | cuda[:N] | mps
    precision: Precision = "fp32"  # fp32 | mixed | bf16 | fp16 (fp16 with gradient scaling)
    out: str = "models/weights/deblur/xu"


def build_initialised_model(cfg: DeblurTrainConfig) -> DeblurCNN:
    """A ``DeblurCNN`` whose deconvolution layers compute the truncated k† (unit sum) of the config's PSF."""
    psf = DEGRADATIONS[cfg.degradation]().psf
    kdag = pseudo_inverse_kernel(psf, cfg.nsr, energy=cfg.support_energy, max_size=cfg.max_length)
    sep = kernel_svd(kdag / kdag.sum(), rank=min(cfg.rank - 1, kdag.shape[0]))  # + 1 DC-restoring term
    model = DeblurCNN(
        rank=sep.rank,
        length=kdag.shape[0],
        hidden=cfg.hidden,
        outlier_kernel=cfg.outlier_kernel,
        out_kernel=cfg.out_kernel,
        residual=True,
    )
    model.init_from_separable(sep.u, sep.s, sep.v)
    return model


def _training_pairs(
    cfg: DeblurTrainConfig, model: DeblurCNN, rng: np.random.Generator
) -> list[tuple[np.ndarray, np.ndarray]]:
    """(deconvolution features ``(rank, h, w)``, reference ``(h, w)``) of ``copies`` degradations per image."""
    degrade = DEGRADATIONS[cfg.degradation]()
    half = (model.config["length"] - 1) // 2
    pairs = []
    for name in TRAINING:
        if name in HELD_OUT:  # the lists are disjoint by construction; keep it that way
            raise ValueError(f"training image {name} is in the held-out set")
        image = load_grey(name)
        h, w = min(image.shape[0], cfg.max_crop), min(image.shape[1], cfg.max_crop)
        y0, x0 = (image.shape[0] - h) // 2, (image.shape[1] - w) // 2
        for _ in range(cfg.copies):
            turn = rng.integers(8)  # one of the 8 flips/rotations of the square
            sharp = np.rot90(image[y0 : y0 + h, x0 : x0 + w], int(turn % 4))
            degraded, reference = degrade(sharp.T if turn >= 4 else sharp, rng)
            with torch.inference_mode():
                features = model.deconvolve(torch.from_numpy(degraded.astype(np.float32))[None, None])[0]
            pairs.append((features.numpy(), reference[half:-half, half:-half].astype(np.float32)))
    return pairs


def _batch(
    pairs: list[tuple[np.ndarray, np.ndarray]], size: int, patch: int, margin: int, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random aligned crops: features ``(size, C, patch + 2 margin, ...)``, targets ``(size, 1, patch, patch)``."""
    inputs, targets = [], []
    for _ in range(size):
        features, reference = pairs[rng.integers(len(pairs))]
        y0 = rng.integers(margin, reference.shape[0] - margin - patch + 1)
        x0 = rng.integers(margin, reference.shape[1] - margin - patch + 1)
        inputs.append(features[:, y0 - margin : y0 + patch + margin, x0 - margin : x0 + patch + margin])
        targets.append(reference[y0 : y0 + patch, x0 : x0 + patch])
    return torch.from_numpy(np.stack(inputs)), torch.from_numpy(np.stack(targets))[:, None]


def _loss(estimate: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
    """Batch MSE, or the mean of ``log(MSE + 1e-5)`` per patch (``1e-5``: a 50 dB cap)."""
    if kind == "mse":
        return torch.nn.functional.mse_loss(estimate, target)
    return torch.log(((estimate - target) ** 2).mean(dim=(1, 2, 3)) + 1e-5).mean()


def train_deblur_cnn(cfg: DeblurTrainConfig, checkpoint: Checkpoint | None = None) -> tuple[DeblurCNN, dict[str, Any]]:
    """Train a ``DeblurCNN`` per ``cfg``; returns the model (eval mode, on the CPU) and metadata for ``model.json``.

    Args:
        cfg: the training settings.
        checkpoint: called with ``(CPU copy of the model, metadata)`` every ``cfg.checkpoint_steps`` steps
            (e.g. to save).

    Raises:
        InputError: when ``cfg.device`` names a device this machine does not have.
    """
    device = resolve_device(cfg.device, "device")
    amp = amp_policy(device, cfg.precision)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    start = time.process_time()
    model = build_initialised_model(cfg)
    model.requires_grad_(False)
    model.outlier.requires_grad_(True)
    pairs = _training_pairs(cfg, model, rng)
    model.to(device)
    optimiser = torch.optim.Adam(model.outlier.parameters(), lr=cfg.lr)
    scaler = amp.scaler()
    step = 0
    losses: list[float] = []

    def metadata() -> dict[str, Any]:
        return {
            "degradation": cfg.degradation,
            "training": {
                "images": list(TRAINING),
                "held_out": list(HELD_OUT),
                "steps": step,
                "cpu_seconds": round(time.process_time() - start, 1),
                "final_loss": float(np.mean(losses[-100:])) if losses else None,
                "device": str(device),
                "precision": amp.name,
                "config": cfg.model_dump(),
            },
        }

    model.train()
    while (progress := max(step / cfg.max_steps, (time.process_time() - start) / cfg.max_seconds)) < 1:
        optimiser.param_groups[0]["lr"] = cfg.lr * 0.5 * (1 + np.cos(np.pi * progress))
        inputs, targets = (
            t.to(device, non_blocking=True) for t in _batch(pairs, cfg.batch, cfg.patch, model.crop, rng)
        )
        with amp.autocast():
            estimate = model.reject(inputs)
        loss = _loss(estimate.float(), targets, cfg.loss)
        optimiser.zero_grad()
        scaler.scale(loss).backward()
        scaler.step(optimiser)
        scaler.update()
        losses.append(loss.item())
        step += 1
        if step % 100 == 0:
            logger.info("step %d  loss %.6f  (%.0f CPU s)", step, np.mean(losses[-100:]), time.process_time() - start)
        if checkpoint is not None and cfg.checkpoint_steps and step % cfg.checkpoint_steps == 0:
            checkpoint(copy.deepcopy(model).to("cpu").eval(), metadata())
    model.requires_grad_(True)
    return model.to("cpu").eval(), metadata()
