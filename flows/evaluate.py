"""Evaluation as a Prefect flow and as the plain call ``deconvseg evaluate`` makes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, task

from deconvseg.pipeline.evaluation import evaluate_members, read_eval_cases


def run_evaluation(
    model: str | Path, data: str | Path, split: str | Path | None = None, *, threads: int = 2, progress: bool = False
) -> dict[str, Any]:
    """Load a checkpoint or ensemble folder, read the labelled cases, score the fused members."""
    import torch

    from deconvseg.pipeline.ensemble import load_ensemble
    from deconvseg.pipeline.segment import InferenceConfig

    torch.set_num_threads(threads)
    ensemble = load_ensemble(model)
    cases = read_eval_cases(data, split)
    config = InferenceConfig(threads=threads)
    if not progress:
        return evaluate_members(cases, ensemble, config)
    from rich.progress import Progress

    with Progress() as bar:
        job = bar.add_task("evaluating", total=len(cases))
        return evaluate_members(cases, ensemble, config, on_case=lambda _: bar.advance(job))


@task
def score(model: str, data: str, split: str | None) -> dict[str, Any]:
    """Prefect task: ``run_evaluation`` without a progress bar."""
    return run_evaluation(model, data, split)


@flow(name="evaluate")
def evaluate_flow(model: str, data: str, split: str | None = None) -> dict[str, Any]:
    """Score a model folder on a dataset (one task)."""
    return score(model, data, split)
