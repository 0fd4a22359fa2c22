"""``deconvseg autoencoder``: the fair MNIST comparison (conv with switch unpooling, conv with plain
upsampling, fully connected; same code size, epochs and optimiser).

``deconvseg shape-guard``: train the ACDC shape guard (plausibility score + refinement prior).

Both run their Prefect flow (``deconvseg.flows.autoencoder``) in a child process with the offline
environment of ``deconvseg.flows.prefect_env``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import typer

from deconvseg.flows.cli.app import app, one_line_errors
from deconvseg.models import WEIGHTS_ROOT

REPO = Path(__file__).resolve().parents[2]
DEFAULT_MNIST = REPO.parent / "shared" / "data" / "mnist"
DEFAULT_ACDC = REPO.parent / "shared" / "data" / "acdc"
MODELS = ("conv", "conv_upsample", "fc")


def _run_flow(request: dict) -> None:
    """Run ``deconvseg.flows.autoencoder`` in a child process; a failure exits with its status."""
    from deconvseg.flows.prefect_env import prefect_environment

    command = [sys.executable, "-m", "deconvseg.flows.autoencoder", json.dumps(request)]
    status = subprocess.run(command, env=prefect_environment()).returncode
    if status:
        raise typer.Exit(code=status)


@app.command()
@one_line_errors
def autoencoder(
    code_size: int = typer.Option(32, "--code-size", help="Bottleneck length, the same for every model."),
    epochs: int = typer.Option(
        10, "--epochs", help="Epochs over the 60,000 training images, the same for every model."
    ),
    data: Path = typer.Option(DEFAULT_MNIST, "--data", help="Folder with the MNIST IDX files (.gz or raw)."),
    out: Path = typer.Option(Path("autoencoder-out"), "--out", help="Folder for comparison.{json,md} and the PNGs."),
    models: str = typer.Option(",".join(MODELS), "--models", help="Comma-separated subset of conv,conv_upsample,fc."),
    noise_std: float = typer.Option(0.0, "--noise-std", help="Denoising: std of Gaussian input noise (0 = off)."),
    limit: int | None = typer.Option(None, "--limit", help="Use only the first N training images (quick runs)."),
    threads: int = typer.Option(1, "--threads", help="Torch threads."),
    seed: int = typer.Option(0, "--seed", help="Seed of weights, shuffle and noise."),
) -> None:
    """Train the autoencoders on MNIST train, score them on MNIST test, write the comparison."""
    from deconvseg.pipeline.autoencoding.fit import AutoencoderTrainConfig
    from deconvseg.pipeline.autoencoding.mnist import read_mnist
    from deconvseg.pipeline.config import validate_config
    from deconvseg.pipeline.errors import InputError

    chosen = [m.strip() for m in models.split(",") if m.strip()]
    unknown = sorted(set(chosen) - set(MODELS))
    if unknown or not chosen:
        raise InputError(
            "--models", f"unknown or empty model list {unknown or chosen}", f"choose from {','.join(MODELS)}"
        )
    config = validate_config(
        {"epochs": epochs, "noise_std": noise_std, "threads": threads, "seed": seed}, AutoencoderTrainConfig, "options"
    )
    read_mnist(data, "test")  # fail here, in one line, on a wrong folder (the flow reads again)
    _run_flow(
        {
            "flow": "mnist",
            "data_dir": str(data.resolve()),
            "out_dir": str(out.resolve()),
            "models": chosen,
            "code_size": code_size,
            "config": config.model_dump(),
            "limit": limit,
        }
    )
    typer.echo((out / "comparison.md").read_text())


@app.command("shape-guard")
@one_line_errors
def shape_guard(
    data: Path = typer.Option(DEFAULT_ACDC, "--data", help="ACDC folder holding volumes/ and splits/."),
    out: Path = typer.Option(WEIGHTS_ROOT / "shape-ae-acdc", "--out", help="Checkpoint folder."),
    epochs: int = typer.Option(15, "--epochs", help="Training epochs."),
    bottleneck: str = typer.Option(
        "spatial", "--bottleneck", help="dense (64-d vector) or spatial (8 x 1/8-grid map)."
    ),
    threads: int = typer.Option(1, "--threads", help="Torch threads."),
    seed: int = typer.Option(0, "--seed", help="Seed of weights, crops and corruptions."),
) -> None:
    """Train the shape autoencoder on ACDC train.list; measure AUC and refinement on val.list; save."""
    from deconvseg.pipeline.errors import InputError

    splits = {name: data / "splits" / f"{name}.list" for name in ("train", "val")}
    for path in splits.values():
        if not path.is_file():
            raise InputError(path, "split list not found", "pass --data pointing at the ACDC folder with splits/")
    config = {
        "bottleneck": bottleneck,
        "code_size": 64 if bottleneck == "dense" else 8,
        "train": {"epochs": epochs, "batch_size": 4, "lr": 5e-3, "seed": seed, "threads": threads},
        "plausibility": {"walled_classes": [3]},
    }  # the LV blood pool lies inside the myocardium
    _run_flow(
        {
            "flow": "shape",
            "root": str(data.resolve()),
            "train_list": str(splits["train"]),
            "val_list": str(splits["val"]),
            "out_dir": str(out.resolve()),
            "config": config,
        }
    )
    metrics = json.loads((out / "model.json").read_text())["metrics"]
    typer.echo(json.dumps({"plausibility_auc": metrics["plausibility_auc"]}))
