"""``deconvseg train CONFIG`` and ``deconvseg evaluate --model M --data D``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from deconvseg.flows.cli.app import app, one_line_errors


@app.command()
@one_line_errors
def train(
    config: Path = typer.Argument(..., help="Training YAML (see configs/phantom-ct.yaml, configs/acdc.yaml)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Output folder (default: the config's 'out')."),
    threads: Optional[int] = typer.Option(None, "--threads", help="Torch threads (default: the config's)."),
    member: Optional[list[str]] = typer.Option(None, "--member", help="Train only this member (repeatable)."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar; print the ensemble summary only."),
) -> None:
    """Train the config's members (resuming an interrupted run) into one ensemble folder."""
    from deconvseg.flows.train import run_training

    overrides = {k: v for k, v in {"out": str(out) if out else None, "threads": threads}.items() if v is not None}
    summary = run_training(config, overrides, progress=not quiet, only=member or None)
    typer.echo(json.dumps(summary))


@app.command()
@one_line_errors
def evaluate(
    model: Path = typer.Option(..., "--model", help="A checkpoint folder or an ensemble folder."),
    data: Path = typer.Option(..., "--data", help="ACDC folder (volumes/), MSD/nnU-Net folder or CSV manifest."),
    split: Optional[Path] = typer.Option(None, "--split", help="List file of case names to score."),
    threads: int = typer.Option(2, "--threads", help="Torch threads."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Per-class Dice and HD95 of a model (ensemble: mean of the members' softmax) on labelled data."""
    from deconvseg.flows.evaluate import run_evaluation

    result = run_evaluation(model, data, split, threads=threads, progress=not as_json)
    if as_json:
        typer.echo(json.dumps({k: v for k, v in result.items() if k != "per_case"}))
        return
    typer.echo(f"cases: {result['cases']}   mean Dice: {result['mean_dice']:.4f}")
    for name, value in result["dice"].items():
        hd = result["hd95"][name]
        typer.echo(f"  {name:>20}: Dice {value:.4f}   HD95 {hd:.2f} mm" if hd is not None else f"  {name:>20}: Dice {value:.4f}")
