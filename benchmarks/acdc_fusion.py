"""Fusion rules of the ACDC ensemble against its members, from one inference pass per case.

Prints one JSON line per variant, scored on the input grid without refinement: each member alone,
``mean``, ``weighted_mean`` (weights = the members' validation Dice per class, ``deconvseg.pipeline.fusion.
dice_weights``), the same weights squared and to the fourth power (sharper preference for the best
member), ``majority`` and ``staple``; with ``--subsets K``, the Dice-weighted mean of every K-member subset
(which members to keep within a CPU budget); then the ensemble as stored (its rule and refinement
plan, ``segment_case``). Keys: ``model``, ``mean_dice``, ``dice``, ``hd95``, ``cases``.

    .venv/bin/python benchmarks/acdc_fusion.py [--model models/weights/acdc] [--data ../shared/data/acdc] [--subsets 4]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(REPO / "models" / "weights" / "acdc"))
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "acdc"))
    parser.add_argument("--split", default=None, help="list file (default: <data>/splits/val.list)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--subsets", type=int, nargs="*", default=[], help="also fuse every subset of these sizes")
    args = parser.parse_args()

    import itertools

    import numpy as np
    import torch

    from deconvseg.pipeline.ensemble import load_ensemble
    from deconvseg.pipeline.evaluation import evaluate_members, read_eval_cases, score_predictions
    from deconvseg.pipeline.fusion import dice_weights, fuse
    from deconvseg.pipeline.resample import restore_labels
    from deconvseg.pipeline.segment import InferenceConfig, effective_config, member_probabilities

    torch.set_num_threads(args.threads)
    cases = read_eval_cases(args.data, args.split or Path(args.data) / "splits" / "val.list")
    ensemble = load_ensemble(args.model)
    table = ensemble.table
    values = np.array([0, *table.values], dtype=np.uint8)
    weights = dice_weights([spec.metrics for spec in ensemble.specs], table.names)
    variants = {member.name: ("member", i) for i, member in enumerate(ensemble.members)}
    variants.update({"mean": ("mean", None), "weighted_mean": ("weighted_mean", weights),
                     "weighted_mean (Dice^2)": ("weighted_mean", weights ** 2),
                     "weighted_mean (Dice^4)": ("weighted_mean", weights ** 4),
                     "majority": ("majority", None), "staple": ("staple", None)})
    names = [member.name for member in ensemble.members]
    for size in args.subsets:
        for subset in itertools.combinations(range(len(names)), size):
            variants[" + ".join(names[i] for i in subset)] = ("subset", list(subset))
    config = effective_config(InferenceConfig(threads=args.threads), ensemble)
    predictions: dict[str, list[np.ndarray]] = {name: [] for name in variants}
    for case in cases:
        stack, grid = member_probabilities(case.image, ensemble, config)
        for name, (rule, arg) in variants.items():
            if rule == "member":
                fused = stack[arg]
            elif rule == "subset":
                fused = fuse(stack[arg], "weighted_mean", weights[arg])
            else:
                fused = fuse(stack, rule, arg)
            predictions[name].append(restore_labels(values[fused.argmax(0)], fused.max(0), grid, case.image, config.slab))
    for name, labels in predictions.items():
        print(json.dumps(line(name + " (unrefined)", score_predictions(cases, labels, table))), flush=True)
    result = evaluate_members(cases, ensemble, config)
    print(json.dumps(line(f"ensemble as stored ({ensemble.settings.fusion}, refined)", result)), flush=True)


def line(name: str, result: dict) -> dict:
    """The JSON line of one variant."""
    return {"model": name, "mean_dice": round(result["mean_dice"], 4),
            "dice": {k: round(v, 4) for k, v in result["dice"].items()},
            "hd95": {k: None if v is None else round(v, 2) for k, v in result["hd95"].items()},
            "cases": result["cases"]}


if __name__ == "__main__":
    main()
