"""``deconvseg train CONFIG`` and ``deconvseg evaluate --model M --data D``."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from deconvseg.flows.cli.app import app, one_line_errors


@app.command()
@one_line_errors
def train(
    config: Path = typer.Argument(..., help="Training YAML (see configs/phantom-ct.yaml, configs/acdc.yaml)."),
    out: Path | None = typer.Option(None, "--out", help="Output folder (default: the config's 'out')."),
    threads: int | None = typer.Option(None, "--threads", help="Torch threads (default: the config's)."),
    device: str | None = typer.Option(None, "--device", help="auto | cpu | cuda[:N] | mps (default: the config's)."),
    member: list[str] | None = typer.Option(None, "--member", help="Train only this member (repeatable)."),
    workers: int | None = typer.Option(
        None,
        "--workers",
        min=1,
        help="Train members side by side on a local Dask cluster of N workers (one member per worker, one GPU each).",
    ),
    dask: str | None = typer.Option(
        None,
        "--dask",
        help="Train members on an existing Dask scheduler (tcp://host:8786; GPU workers declare --resources GPU=1).",
    ),
    api_url: str | None = typer.Option(
        None, "--api-url", help="Prefect server API for --workers/--dask (default: a loopback server for --workers)."
    ),
    prefect_home: Path | None = typer.Option(None, "--prefect-home", help="Prefect home for --workers/--dask."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar; print the ensemble summary only."),
) -> None:
    """Train the config's members (resuming an interrupted run) into one ensemble folder.

    Without --workers/--dask the members train one after the other in this process; with them, one
    member per Dask worker through Prefect, gathered into ensemble.json at the end.
    """
    from deconvseg.flows.train import load_train_config, run_training

    given = {"out": str(out) if out else None, "threads": threads, "device": device}
    overrides = {k: v for k, v in given.items() if v is not None}
    if workers or dask:
        if member:
            raise typer.BadParameter("--member trains in this process; leave it out with --workers/--dask")
        from deconvseg.flows.cli.app import release_stderr
        from deconvseg.flows.runners import run_flow_child

        load_train_config(config, overrides, local=not dask)  # bad keys or devices fail here, before Prefect starts
        request = {
            "config_path": str(config.resolve()),
            "overrides": overrides,
            "dask_address": dask,
            "dask_workers": workers,
        }
        release_stderr()  # the refusals are over: the child's output streams
        code = run_flow_child("deconvseg.flows.train", request, prefect_home, api_url, local_cluster=bool(workers))
        if code:
            raise typer.Exit(code=code)
        return
    summary = run_training(config, overrides, progress=not quiet, only=member or None)
    typer.echo(json.dumps(summary))


@app.command()
@one_line_errors
def evaluate(
    model: str = typer.Option(
        ..., "--model", help="A shipped model's name (acdc, ...) or a checkpoint/ensemble folder given as a path."
    ),
    data: Path = typer.Option(..., "--data", help="ACDC folder (volumes/), MSD/nnU-Net folder or CSV manifest."),
    split: Path | None = typer.Option(None, "--split", help="List file of case names to score."),
    threads: int = typer.Option(2, "--threads", help="Torch threads."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Per-class Dice and HD95 of a model (ensemble: mean of the members' softmax) on labelled data."""
    from deconvseg.flows.evaluate import run_evaluation
    from deconvseg.pipeline.model_paths import resolve_model

    result = run_evaluation(resolve_model(model), data, split, threads=threads, progress=not as_json)
    if as_json:
        typer.echo(json.dumps({k: v for k, v in result.items() if k != "per_case"}))
        return
    typer.echo(f"cases: {result['cases']}   mean Dice: {result['mean_dice']:.4f}")
    for name, value in result["dice"].items():
        hd = result["hd95"][name]
        typer.echo(
            f"  {name:>20}: Dice {value:.4f}   HD95 {hd:.2f} mm"
            if hd is not None
            else f"  {name:>20}: Dice {value:.4f}"
        )
