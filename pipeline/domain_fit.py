"""Compute a model's ``TrainingDomain`` from its training cases and its validation predictions.

Training calls ``write_domain`` when the ensemble is gathered; ``benchmarks/domain_backfill.py``
calls it for the shipped models. Every validation case is segmented by the ensemble as a user's
case would be; its stats rows (mean voxel uncertainty per structure, volumes), Dice, ensemble
structure uncertainty and shape score give the calibration, and the case flags the checks raise
on it give the measured flag rates that the model card states.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from deconvseg.pipeline.checkpoints import ENSEMBLE, read_json
from deconvseg.pipeline.domain import (
    CaseFlag,
    TrainingDomain,
    calibrate,
    check_applicability,
    fit_domain,
    input_flags,
    output_flags,
)
from deconvseg.pipeline.ensemble import Ensemble, load_ensemble
from deconvseg.pipeline.errors import InputError
from deconvseg.pipeline.export.stats import compute_stats
from deconvseg.pipeline.files import write_json_atomic
from deconvseg.pipeline.io.datasets import Case
from deconvseg.pipeline.labels import LabelTable
from deconvseg.pipeline.metrics import dice
from deconvseg.pipeline.normalize import detect_modality
from deconvseg.pipeline.segment import InferenceConfig, segment_case

log = logging.getLogger(__name__)

# What the training sets the project knows are for, by the start of their description.
KNOWN_DATASETS = {
    "ACDC": ("cardiac cine-MR segmentation: right ventricle, myocardium, left ventricle", "heart (short-axis cine MR)"),
    "deconvseg.pipeline.phantoms": (
        "demo: organs of synthetic phantoms (liver, spleen, kidneys)",
        "synthetic abdomen phantoms only",
    ),
}


@dataclass(frozen=True)
class CaseMeasure:
    """One validation case as the checks see it.

    Attributes:
        case_id: the case.
        rows: its ``stats.json`` rows (flags set by the domain's checks).
        dice: Dice per structure name against the reference.
        structure_uncertainty: the ensemble's per-structure score by name.
        shape_score: the shape guard's score, when the model has one.
        flags: the case flags raised.
    """

    case_id: str
    rows: list[dict[str, Any]]
    dice: dict[str, float]
    structure_uncertainty: dict[str, float]
    shape_score: float | None
    flags: list[CaseFlag]


def describe(dataset: str, table: LabelTable) -> tuple[str, str]:
    """``(task, body_region)`` for a training set's description (generic when unknown)."""
    for prefix, described in KNOWN_DATASETS.items():
        if dataset.startswith(prefix):
            return described
    return f"segmentation of {', '.join(table.names)}", "unspecified"


def measure_case(case: Case, ensemble: Ensemble, domain: TrainingDomain, config: InferenceConfig) -> CaseMeasure:
    """Segment one labelled case with the ensemble and run every check on it."""
    if case.label is None:
        raise ValueError(f"{case.case_id}: calibration needs labelled cases")
    flags = check_applicability(case.image, domain, ensemble.name, allow_mismatch=True)
    flags += input_flags(case.image, domain)
    result = segment_case(case.image, ensemble, config)
    rows = compute_stats(case.image, result.labels, result.table, result.uncertainty)
    flags += output_flags(rows, domain)
    names = {label.value: label.name for label in result.table}
    scores = {name: dice(result.labels.array == value, case.label.array == value) for value, name in names.items()}
    uncertainty = {names[v]: s for v, s in result.structure_uncertainty.items() if v in names}
    shape = result.shape.plausibility.score if result.shape is not None else None
    return CaseMeasure(case.case_id, rows, scores, uncertainty, shape, flags)


def fit_model_domain(
    train: Sequence[Case],
    val: Sequence[Case],
    ensemble: Ensemble,
    *,
    dataset: str,
    task: str | None = None,
    body_region: str | None = None,
    config: InferenceConfig = InferenceConfig(threads=1),
    on_case: Callable[[CaseMeasure], None] | None = None,
) -> TrainingDomain:
    """The training domain of an ensemble, calibrated on its validation predictions.

    Args:
        train: the training cases (images as read, labels).
        val: labelled validation cases, segmented here for the calibration (none: no calibration).
        ensemble: the model (its settings' ``domain`` is ignored).
        dataset: the training data, in words (``model.json``'s ``training.dataset``).
        task: what it segments; ``body_region``: where. Default: ``describe(dataset, ...)``.
        config: inference settings of the calibration runs.
        on_case: called with each validation case's measure (progress, per-case figures).
    """
    table, spec = ensemble.table, ensemble.members[0].spec
    known_task, known_region = describe(dataset, table)
    modalities = [detect_modality(case.image) for case in train]
    domain = fit_domain(
        [c.image for c in train],
        [c.label for c in train if c.label is not None],
        {label.value: label.name for label in table},
        modality=max(set(modalities), key=modalities.count),
        task=task or known_task,
        body_region=body_region or known_region,
        dataset=dataset,
        spacing=spec.spacing,
        in_channels=spec.in_channels,
    )
    measures = []
    for case in val:
        measures.append(measure_case(case, ensemble, domain, config))
        if on_case:
            on_case(measures[-1])
    if not measures:
        return domain
    shapes = [m.shape_score for m in measures if m.shape_score is not None]
    return calibrate(
        domain,
        [m.rows for m in measures],
        [m.dice for m in measures],
        structure_uncertainty=[m.structure_uncertainty for m in measures],
        shape_scores=shapes or None,
        case_flags=[m.flags for m in measures],
    )


def _cannot_segment(ensemble: Ensemble) -> str | None:
    """Why ``ensemble`` cannot segment any input (fusion weights leaving a class without weight), or ``None``."""
    settings = ensemble.settings
    if settings.fusion != "weighted_mean" or settings.weights is None:
        return None
    weights = np.asarray(settings.weights, dtype=float)
    dead = np.flatnonzero((weights[:, None] if weights.ndim == 1 else weights).sum(axis=0) <= 0)
    return f"fusion weights give channel(s) {dead.tolist()} no weight" if dead.size else None


def write_domain(
    folder: str | Path,
    train: Sequence[Case],
    val: Sequence[Case],
    *,
    dataset: str,
    config: InferenceConfig = InferenceConfig(threads=1),
) -> dict[str, Any]:
    """Fit the training domain of the model in ``folder`` and store it in its ``ensemble.json`` (key ``domain``).

    Args:
        folder: a model folder whose ``ensemble.json`` holds everything else already.
        train, val: its training cases and its labelled validation cases (for the calibration).
        dataset: the training data, in words.
        config: inference settings of the calibration runs.

    Returns:
        The ``ensemble.json`` content as written.
    """
    path = Path(folder) / ENSEMBLE
    settings = read_json(path, "ensemble config")
    settings.pop("domain", None)
    ensemble = load_ensemble(folder).with_settings(domain=None)
    try:
        guard = ensemble.shape_guard_folder()
    except InputError as err:  # named outside the model folder: inference will refuse it, calibration skips it
        log.warning("%s; the domain record gets no shape-score calibration", err)
        guard = None
        ensemble = ensemble.with_settings(shape_guard=None)
    if guard is not None and not guard.is_dir():  # e.g. trained before its guard: calibrate without shape scores
        log.warning("%s: shape guard %s not found; the domain record gets no shape-score calibration", folder, guard)
        ensemble = ensemble.with_settings(shape_guard=None)
    broken = _cannot_segment(ensemble)
    if broken:
        log.warning("%s: %s, so the model cannot segment: its domain record gets no calibration", folder, broken)
    domain = fit_model_domain(train, [] if broken else val, ensemble, dataset=dataset, config=config)
    settings["domain"] = domain.model_dump(mode="json")
    write_json_atomic(path, settings)
    return settings
