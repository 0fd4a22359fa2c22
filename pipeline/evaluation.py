"""Score a trained model or ensemble on any dataset the datasets module reads.

Each case goes through ``pipeline.segment.segment_case`` exactly as in production (every member
on its own working grid, fusion by ``ensemble.json``'s rule, post-processing plan, restored to the
input grid), and the labels are scored with ``pipeline.metrics`` on the input grid (per-class
Dice, HD95, surface Dice).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from pipeline.datasets import Case, read_acdc, read_manifest, read_msd
from pipeline.errors import InputError
from pipeline.metrics import aggregate, label_metrics
from pipeline.segment import InferenceConfig, segment_case

Member = tuple[nn.Module, dict[str, Any]]


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


def evaluate_members(
    cases: Sequence[Case],
    members: Sequence[Member],
    config: InferenceConfig = InferenceConfig(),
    *,
    ensemble: Mapping[str, Any] | None = None,
    on_case: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Per-class metrics of ``segment_case``'s output, averaged over ``cases`` (``pipeline.metrics.aggregate``).

    Args:
        cases: labelled cases, on any grid (scored on the input grid).
        members: ``models.registry.load_ensemble`` output.
        config: inference settings (overlap, bf16, ...).
        ensemble: fusion rule/weights/post-processing; default ``ensemble.json`` beside the members.
        on_case: called with each case id when it is done (progress displays).

    Returns:
        ``aggregate``'s dict (``mean_dice``, ``dice``, ``hd95``, ``surface_dice``, ..., ``cases``)
        plus ``infer_s_per_volume`` and ``per_case`` (``{case_id: {"dice": ..., "mean_dice": ...}}``).
    """
    results, per_case, seconds = [], {}, 0.0
    for case in cases:
        start = time.perf_counter()
        segmentation = segment_case(case.image, members, config, ensemble=ensemble)
        seconds += time.perf_counter() - start
        metrics = label_metrics(segmentation.labels.array, case.label.array, segmentation.table, case.image.spacing)
        results.append(metrics)
        per_case[case.case_id] = {"dice": metrics["dice"], "mean_dice": metrics["mean_dice"]}
        if on_case:
            on_case(case.case_id)
    summary = aggregate(results)
    summary["infer_s_per_volume"] = seconds / max(len(cases), 1)
    summary["per_case"] = per_case
    return summary
