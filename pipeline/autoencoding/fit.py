"""Train and evaluate autoencoders (MNIST images or one-hot label grids) with one small loop.

The loop is the same for every model of a comparison: Adam, a fixed number of epochs, a seeded
shuffle, and an optional corruption of the inputs only (denoising autoencoder, Vincent et al.,
"Extracting and Composing Robust Features with Denoising Autoencoders", ICML 2008).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from deconvseg.models.autoencoders import build_autoencoder, count_parameters
from deconvseg.pipeline.config import Settings
from deconvseg.pipeline.devices import Precision, amp_policy, resolve_device

log = logging.getLogger(__name__)

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
CorruptFn = Callable[[torch.Tensor, np.random.Generator], torch.Tensor]
ProgressFn = Callable[[int, float], None]


class AutoencoderTrainConfig(Settings):
    """Training settings shared by all models of a comparison.

    Attributes:
        epochs: passes over the training set.
        batch_size: samples per step.
        lr: Adam learning rate.
        noise_std: std of Gaussian noise added to MNIST inputs (0 = plain autoencoder).
        seed: seeds the weights, the shuffle and the corruptions.
        threads: torch intra-op threads (set by the CLI and flows, never by the library).
        device: ``auto | cpu | cuda[:N] | mps`` (``deconvseg.pipeline.devices``); the model trains there
            and is handed back on the CPU.
        precision: ``fp32 | mixed | bf16 | fp16`` autocast (fp16 with gradient scaling).
    """

    epochs: int = 5
    batch_size: int = 128
    lr: float = 2e-3
    noise_std: float = 0.0
    seed: int = 0
    threads: int = 1
    device: str = "auto"
    precision: Precision = "fp32"


@dataclass
class TrainHistory:
    """Mean training loss per epoch (``epoch_loss[0]`` is before any update) and the seconds spent."""

    epoch_loss: list[float] = field(default_factory=list)
    seconds: float = 0.0


def image_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error between ``sigmoid(logits)`` and the target pixels in [0, 1]."""
    return F.mse_loss(torch.sigmoid(logits), target)


def gaussian_noise(std: float) -> CorruptFn:
    """A corruption adding N(0, std^2) noise, clipped to [0, 1] (a new tensor)."""

    def corrupt(x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        noise = torch.from_numpy(rng.normal(0.0, std, size=tuple(x.shape)).astype(np.float32))
        return (x + noise).clamp(0.0, 1.0)

    return corrupt


@torch.no_grad()
def mean_loss(
    model: nn.Module, data: torch.Tensor, loss: LossFn, make_input: CorruptFn | None = None, batch_size: int = 256
) -> float:
    """Loss of the model on ``data`` averaged over samples (inputs made with a fixed seed, on the CPU;
    the model runs on its own device)."""
    model.eval()
    device = _device_of(model)
    rng = np.random.default_rng(0)
    total = 0.0
    for start in range(0, len(data), batch_size):
        x = data[start : start + batch_size]
        inputs = make_input(x, rng) if make_input else x
        total += float(loss(model(inputs.to(device)), x.to(device))) * len(x)
    return total / max(len(data), 1)


def train_autoencoder(
    model: nn.Module,
    data: torch.Tensor,
    config: AutoencoderTrainConfig,
    *,
    loss: LossFn = image_loss,
    make_input: CorruptFn | None = None,
    progress: ProgressFn | None = None,
) -> TrainHistory:
    """Train ``model`` in place to reproduce ``data`` from (optionally corrupted) ``data``.

    Args:
        model: any autoencoder whose ``forward`` returns logits.
        data: training samples, ``(n, c, ...)``; never modified.
        config: epochs, batch size, learning rate, seed.
        loss: ``loss(logits, clean_batch)``.
        make_input: maps a clean batch to the network input, e.g. a corruption (denoising) or a
            one-hot encoding; default: ``gaussian_noise`` when ``config.noise_std > 0``, else the
            batch itself.
        progress: called with ``(epoch, mean_loss)`` after each epoch.

    Returns:
        The loss history (entry 0 measured before training) and the training seconds; the model is
        back on the CPU.

    Raises:
        InputError: when ``config.device`` names a device this machine does not have.
    """
    device = resolve_device(config.device, "device")
    amp = amp_policy(device, config.precision)
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    if make_input is None and config.noise_std > 0:
        make_input = gaussian_noise(config.noise_std)
    model.to(device)
    optimiser = torch.optim.Adam(model.parameters(), lr=config.lr)
    scaler = amp.scaler()
    history = TrainHistory(epoch_loss=[mean_loss(model, data[:2048], loss, make_input)])
    start = time.perf_counter()
    for epoch in range(1, config.epochs + 1):
        model.train()
        order = torch.from_numpy(rng.permutation(len(data)))
        total = 0.0
        for first in range(0, len(data), config.batch_size):
            clean = data[order[first : first + config.batch_size]]
            inputs = (make_input(clean, rng) if make_input else clean).to(device, non_blocking=True)
            with amp.autocast():
                logits = model(inputs)
            value = loss(logits.float(), clean.to(device, non_blocking=True))
            optimiser.zero_grad(set_to_none=True)
            scaler.scale(value).backward()
            scaler.step(optimiser)
            scaler.update()
            total += value.item() * len(clean)
        history.epoch_loss.append(total / len(data))
        log.info("epoch %d/%d loss %.5f", epoch, config.epochs, history.epoch_loss[-1])
        if progress:
            progress(epoch, history.epoch_loss[-1])
    history.seconds = time.perf_counter() - start
    model.to("cpu")
    return history


def _device_of(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (the CPU for a model without any)."""
    return next((p.device for p in model.parameters()), torch.device("cpu"))


@torch.no_grad()
def reconstruct(model: nn.Module, images: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """``sigmoid(model(images))`` in evaluation mode, batched, on the model's device; returned on the CPU."""
    model.eval()
    device = _device_of(model)
    return torch.cat(
        [torch.sigmoid(model(images[i : i + batch_size].to(device))).cpu() for i in range(0, len(images), batch_size)]
    )


def reconstruction_metrics(model: nn.Module, images: torch.Tensor) -> dict[str, float]:
    """Test MSE (pixels in [0, 1]) and PSNR = 10 log10(1 / MSE) dB of the mean MSE."""
    mse = float(F.mse_loss(reconstruct(model, images), images))
    return {"test_mse": mse, "psnr": 10.0 * math.log10(1.0 / mse) if mse > 0 else math.inf}


@dataclass
class FitResult:
    """One trained model of a comparison: its table row, loss history, the model itself and the
    reconstructions of the first test images (``(k, 28, 28)`` in [0, 1], for the figure)."""

    row: dict[str, Any]
    history: TrainHistory
    model: nn.Module
    samples: np.ndarray


def fit_and_evaluate(
    name: str,
    train_images: torch.Tensor,
    test_images: torch.Tensor,
    code_size: int,
    config: AutoencoderTrainConfig,
    progress: ProgressFn | None = None,
    n_samples: int = 10,
) -> FitResult:
    """Build ``name`` (conv, conv_upsample, fc), train it, and measure it on the test images.

    Returns:
        The row ``{model, code_size, test_mse, psnr, params, train_s, epochs, noise_std}``, the
        history and the trained model.
    """
    torch.manual_seed(config.seed)
    model = build_autoencoder(name, code_size)
    history = train_autoencoder(model, train_images, config, progress=progress)
    row = {
        "model": name,
        "code_size": code_size,
        **reconstruction_metrics(model, test_images),
        "params": count_parameters(model),
        "train_s": round(history.seconds, 1),
        "epochs": config.epochs,
        "noise_std": config.noise_std,
    }
    samples = reconstruct(model, test_images[:n_samples])[:, 0].numpy()
    return FitResult(row=row, history=history, model=model, samples=samples)
