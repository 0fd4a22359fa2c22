"""Score a trained model or ensemble on any dataset the datasets module reads.

Each case goes through ``deconvseg.pipeline.segment.segment_case`` exactly as in production (every member
on its own working grid, fusion by ``ensemble.json``'s rule, post-processing plan, restored to the
input grid), and the labels are scored with ``deconvseg.pipeline.metrics`` on the input grid (per-class
Dice, HD95, surface Dice).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from deconvseg.pipeline.ensemble import Ensemble
from deconvseg.pipeline.errors import InputError
from deconvseg.pipeline.io.datasets import Case, read_acdc, read_manifest, read_msd
from deconvseg.pipeline.labels import LabelTable
from deconvseg.pipeline.metrics import aggregate, label_metrics
from deconvseg.pipeline.postprocess import apply_plan, choose_steps
from deconvseg.pipeline.segment import InferenceConfig, segment_case
from deconvseg.pipeline.volume import Volume


def read_eval_cases(data: str | Path, split: str | Path | None = None) -> list[Case]:
    """Labelled cases from an ACDC folder (``volumes/``), an MSD/nnU-Net folder or a CSV manifest.

    Args:
        data: the dataset folder or manifest file.
        split: a list file of case names (one per line) to keep; ``None`` keeps every case.

    Raises:
        InputError: when the layout is not recognised or a case has no label.
    """
    data = Path(data)
    if (data / "volumes").is_dir():
        cases = read_acdc(data, split)
    else:
        if data.suffix == ".csv":
            cases = read_manifest(data)
        elif (data / "dataset.json").is_file():
            cases = read_msd(data)
        else:
            raise InputError(data, "not an ACDC folder, MSD/nnU-Net folder or CSV manifest", "pass --data accordingly")
        if split is not None:
            names = [n.strip() for n in Path(split).read_text().splitlines() if n.strip()]
            cases = [c for c in cases if c.case_id in set(names)]
    missing = [c.case_id for c in cases if c.label is None]
    if missing:
        raise InputError(data, f"{len(missing)} cases have no label (e.g. {missing[0]})", "evaluate on labelled cases")
    return cases


def _label(case: Case) -> Volume:
    """``case.label``, which evaluation needs (``read_eval_cases`` rejects unlabelled cases)."""
    if case.label is None:
        raise InputError(case.case_id, "case has no label map", "evaluate on labelled cases")
    return case.label


def predict_cases(
    cases: Sequence[Case],
    ensemble: Ensemble,
    config: InferenceConfig = InferenceConfig(),
    *,
    on_case: Callable[[str], None] | None = None,
) -> tuple[list[np.ndarray], float]:
    """``segment_case`` label maps of every case (input grid) and the mean seconds per case."""
    labels, seconds = [], 0.0
    for case in cases:
        start = time.perf_counter()
        labels.append(segment_case(case.image, ensemble, config).labels.array)
        seconds += time.perf_counter() - start
        if on_case:
            on_case(case.case_id)
    return labels, seconds / max(len(cases), 1)


def fit_postprocess(
    cases: Sequence[Case],
    ensemble: Ensemble,
    candidates: Sequence[Mapping[str, Any]],
    config: InferenceConfig = InferenceConfig(),
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Choose refinement steps on validation cases (``deconvseg.pipeline.postprocess.choose_steps``).

    The fused, unrefined predictions on the input grid are tried with each candidate; a step is
    kept for a class only when no class's mean Dice drops (nnU-Net's rule).

    Returns:
        The plan for ``ensemble.json``'s ``postprocess`` key, and the scores of the refined
        predictions (``score_predictions``; the plan applied on the input grid).
    """
    unrefined = config.model_copy(update={"refine": False})
    predictions, seconds = predict_cases(cases, ensemble, unrefined)
    references = [_label(case).array for case in cases]
    spacings = [case.image.spacing for case in cases]
    plan = choose_steps(predictions, references, spacings, candidates)
    refined = [apply_plan(p, plan, s) for p, s in zip(predictions, spacings)]
    scores = score_predictions(cases, refined, ensemble.table)
    scores["infer_s_per_volume"] = seconds
    return plan, scores


def score_predictions(cases: Sequence[Case], predictions: Sequence[np.ndarray], table: LabelTable) -> dict[str, Any]:
    """``deconvseg.pipeline.metrics.aggregate`` of per-case ``label_metrics``, plus ``per_case`` Dice."""
    results, per_case = [], {}
    for case, pred in zip(cases, predictions):
        metrics = label_metrics(pred, _label(case).array, table, case.image.spacing)
        results.append(metrics)
        per_case[case.case_id] = {"dice": metrics["dice"], "mean_dice": metrics["mean_dice"]}
    summary = aggregate(results)
    summary["per_case"] = per_case
    return summary


def evaluate_members(
    cases: Sequence[Case],
    ensemble: Ensemble,
    config: InferenceConfig = InferenceConfig(),
    *,
    on_case: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Per-class metrics of ``segment_case``'s output, averaged over ``cases``
    (``deconvseg.pipeline.metrics.aggregate``).

    Args:
        cases: labelled cases, on any grid (scored on the input grid).
        ensemble: the model (``deconvseg.pipeline.ensemble.load_ensemble``).
        config: inference settings (overlap, bf16, ...).
        on_case: called with each case id when it is done (progress displays).

    Returns:
        ``aggregate``'s dict (``mean_dice``, ``dice``, ``hd95``, ``surface_dice``, ..., ``cases``)
        plus ``infer_s_per_volume`` and ``per_case`` (``{case_id: {"dice": ..., "mean_dice": ...}}``).
    """
    predictions, seconds = predict_cases(cases, ensemble, config, on_case=on_case)
    summary = score_predictions(cases, predictions, ensemble.table)
    summary["infer_s_per_volume"] = seconds
    return summary
