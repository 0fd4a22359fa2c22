"""Prefect flows of the autoencoder stage.

``autoencoder_comparison``: train conv (switch unpooling), conv_upsample and fc autoencoders with
the same code size, epochs and optimiser on the MNIST training images, score them on the test
images, write the comparison (table, reconstruction grid, loss curves) and publish the table as
Prefect table + Markdown artifacts.

``shape_guard_training``: train the ACDC shape guard, measure its plausibility score (ROC AUC of
reference vs corrupted labels) and the per-class effect of its refinement on the validation
split, and save it with the per-class plan (a class is enabled only where refinement helped).

Each task wraps one library function. The CLI runs these flows in a child process with the
offline Prefect environment: ``python -m deconvseg.flows.autoencoder '{"flow": "mnist"|"shape", ...}'``.
"""

from __future__ import annotations

import json
import sys
from typing import Any, cast

import numpy as np
import torch
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from deconvseg.pipeline.autoencoding.corruption import KINDS, corrupt_labels
from deconvseg.pipeline.autoencoding.fit import AutoencoderTrainConfig, FitResult, fit_and_evaluate
from deconvseg.pipeline.autoencoding.guard import ShapeGuard, save_shape_guard
from deconvseg.pipeline.autoencoding.guard_training import (
    ShapeGuardTrainConfig,
    calibrate_plausibility,
    plausibility_study,
    refinement_study,
    train_shape_guard,
)
from deconvseg.pipeline.autoencoding.mnist import read_mnist
from deconvseg.pipeline.autoencoding.report import comparison_markdown, write_comparison
from deconvseg.pipeline.autoencoding.score import PlausibilityConfig
from deconvseg.pipeline.io.datasets import ACDC_NOMINAL_SPACING, read_acdc
from deconvseg.pipeline.volume import Volume


@task(name="read-mnist")
def read_mnist_task(folder: str, split: str, limit: int | None = None) -> torch.Tensor:
    """Images of one split as ``float32`` ``(n, 1, 28, 28)`` in [0, 1] (wraps ``read_mnist``)."""
    images = read_mnist(folder, split).as_float()
    return torch.from_numpy(images[:limit] if limit else images)


@task(name="fit-autoencoder")
def fit_task(name: str, train: torch.Tensor, test: torch.Tensor, code_size: int, config: dict) -> FitResult:
    """Train and score one model (wraps ``fit_and_evaluate``)."""
    logger = get_run_logger()
    result = fit_and_evaluate(
        name,
        train,
        test,
        code_size,
        AutoencoderTrainConfig(**config),
        progress=lambda epoch, loss: logger.info("%s epoch %d loss %.5f", name, epoch, loss),
    )
    logger.info("%s: %s", name, json.dumps(result.row))
    return result


@task(name="write-comparison")
def write_comparison_task(out_dir: str, results: list[FitResult], originals: np.ndarray) -> dict[str, str]:
    """Table, grid and loss curves (wraps ``write_comparison``)."""
    paths = write_comparison(
        out_dir,
        [r.row for r in results],
        originals,
        {r.row["model"]: r.samples for r in results},
        {r.row["model"]: r.history.epoch_loss for r in results},
    )
    return {k: str(v) for k, v in paths.items()}


@flow(name="autoencoder-comparison")
def autoencoder_comparison(
    data_dir: str, out_dir: str, models: list[str], code_size: int, config: dict, limit: int | None = None
) -> list[dict[str, Any]]:
    """Fair MNIST comparison; returns the table rows (one per model)."""
    torch.set_num_threads(AutoencoderTrainConfig(**config).threads)
    train = read_mnist_task(data_dir, "train", limit)
    test = read_mnist_task(data_dir, "test")
    results = [fit_task(name, train, test, code_size, config) for name in models]
    write_comparison_task(out_dir, results, test[:10, 0].numpy())
    rows = [r.row for r in results]
    create_table_artifact(key="autoencoder-comparison", table=rows, description="MNIST autoencoders, same code size")
    create_markdown_artifact(key="autoencoder-comparison-md", markdown=comparison_markdown(rows))
    return rows


@task(name="read-acdc-labels")
def read_labels_task(root: str, split: str) -> list[np.ndarray]:
    """Label arrays ``[z, y, x]`` of an ACDC split (wraps ``read_acdc``)."""
    return [cast(Volume, case.label).array for case in read_acdc(root, split)]  # ACDC cases always carry a label


@task(name="train-shape-guard")
def train_shape_guard_task(labels: list[np.ndarray], config: dict) -> tuple[ShapeGuard, list[float], float]:
    """Train the denoising shape autoencoder (wraps ``train_shape_guard``)."""
    logger = get_run_logger()
    guard, history = train_shape_guard(
        labels, ShapeGuardTrainConfig(**config), progress=lambda e, loss: logger.info("epoch %d loss %.4f", e, loss)
    )
    return guard, history.epoch_loss, history.seconds


@task(name="calibrate-plausibility")
def calibrate_task(guard: ShapeGuard, labels: list[np.ndarray], seed: int) -> tuple[PlausibilityConfig, dict]:
    """Choose the score's volume scale and weight on training labels (wraps ``calibrate_plausibility``)."""
    return calibrate_plausibility(guard, labels, ACDC_NOMINAL_SPACING, seed=seed)


@task(name="plausibility-study")
def plausibility_task(guard: ShapeGuard, labels: list[np.ndarray], seed: int) -> dict:
    """Scores and ROC AUCs on reference vs corrupted labels (wraps ``plausibility_study``)."""
    return plausibility_study(guard, labels, ACDC_NOMINAL_SPACING, seed=seed)


@task(name="refinement-study")
def refinement_task(guard: ShapeGuard, labels: list[np.ndarray], inputs: list[np.ndarray]) -> dict:
    """Per-class Dice before/after refinement (wraps ``refinement_study``)."""
    return refinement_study(guard, labels, inputs)


@task(name="save-shape-guard")
def save_guard_task(folder: str, guard: ShapeGuard, arch_kwargs: dict, meta: dict) -> str:
    """Write the checkpoint (wraps ``save_shape_guard``)."""
    return str(save_shape_guard(folder, guard, arch_kwargs, meta))


@flow(name="shape-guard-training")
def shape_guard_training(root: str, train_list: str, val_list: str, out_dir: str, config: dict) -> dict:
    """Train, measure and save the ACDC shape guard; returns the metrics written to ``model.json``."""
    cfg = ShapeGuardTrainConfig(**config)
    torch.set_num_threads(cfg.train.threads)
    train_labels = read_labels_task(root, train_list)
    val_labels = read_labels_task(root, val_list)
    guard, losses, seconds = train_shape_guard_task(train_labels, config)
    guard.plausibility, train_auc = calibrate_task(guard, train_labels, cfg.train.seed + 3)
    plausibility = plausibility_task(guard, val_labels, cfg.train.seed + 1)
    flag_below = float(np.percentile(plausibility["reference"], 5))
    guard.plausibility = guard.plausibility.model_copy(update={"flag_below": flag_below})
    rng = np.random.default_rng(cfg.train.seed + 2)
    corrupted = {kind: [corrupt_labels(v, kind, rng) for v in val_labels] for kind in KINDS}
    refinement = {kind: refinement_task(guard, val_labels, inputs) for kind, inputs in corrupted.items()}
    metrics = {
        "plausibility_auc": plausibility["auc"],
        "plausibility_auc_train": train_auc,
        "reference_score_mean": float(np.mean(plausibility["reference"])),
        "flag_below": flag_below,
        "corrupted_score_mean": {kind: float(np.mean(plausibility[kind])) for kind in KINDS},
        "refinement": refinement,
    }
    meta = {
        "labels": {"1": "RV", "2": "MYO", "3": "LV"},
        "metrics": metrics,
        "training": {
            "data": f"ACDC {train_list}",
            "volumes": len(train_labels),
            "seconds": round(seconds, 1),
            "loss_per_epoch": losses,
            "config": cfg.model_dump(mode="json"),
        },
    }
    arch = {
        "n_classes": cfg.grid.n_classes,
        "grid": list(cfg.grid.grid),
        "channels": list(cfg.channels),
        "code_size": cfg.code_size,
        "bottleneck": cfg.bottleneck,
    }
    save_guard_task(out_dir, guard, arch, meta)
    return metrics


if __name__ == "__main__":
    request = json.loads(sys.argv[1])
    which = request.pop("flow")
    result = autoencoder_comparison(**request) if which == "mnist" else shape_guard_training(**request)
    print(json.dumps(result))
