"""Shape guard on ACDC val: plausibility ROC AUC per corruption and severity, refinement per class.

    python benchmarks/shape_guard.py [--model models/weights/shape-ae-acdc] [--severities 0.5 1 2]

One JSON line per severity: ``{"severity", "auc": {"hole", "island", "swap", "all"},
"reference_mean", "corrupted_mean": {...}, "flagged": {...}, "changed_ml": {...}}``, where a
positive is a reference label map of ``val.list`` and a negative one corrupted copy per map and
kind (``deconvseg.pipeline.autoencoding.corruption``: hole radius 0.4 x severity of the structure's half-extent,
island volume 0.15 x severity of the structure's volume, swap = two structures exchange values);
``flagged`` is the share of maps below the guard's ``flag_below`` and ``changed_ml`` the median,
min and max volume the corruption changed (ACDC nominal voxel 1.5625 x 1.5625 x 10 mm). Then one
line per error kept out of training and calibration (``OTHER_KINDS``: a structure missing from
its first or last slice, a structure grown 2 voxels in-plane), with the same fields. Then one
JSON line per input kind (the references themselves, then each corruption at severity 1) with
the per-class Dice against the reference before and after ``refine`` of that class alone.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from deconvseg.pipeline.io.datasets import ACDC_NOMINAL_SPACING, read_acdc
from deconvseg.pipeline.autoencoding.corruption import KINDS, OTHER_KINDS, corrupt_labels
from deconvseg.pipeline.autoencoding.guard import load_shape_guard
from deconvseg.pipeline.autoencoding.score import voxel_ml
from deconvseg.pipeline.autoencoding.guard_training import corrupted_copies, plausibility_study, refinement_study, roc_auc

REPO = Path(__file__).resolve().parents[1]
NAMES = {1: "RV", 2: "MYO", 3: "LV"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=REPO / "models" / "weights" / "shape-ae-acdc")
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "acdc")
    parser.add_argument("--severities", type=float, nargs="+", default=[0.5, 1.0, 2.0])
    parser.add_argument("--no-refinement", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    guard = load_shape_guard(args.model)
    val = [case.label.array for case in read_acdc(args.data, args.data / "splits" / "val.list")]
    spacing, flag = ACDC_NOMINAL_SPACING, guard.plausibility.flag_below
    for severity in args.severities:
        study = plausibility_study(guard, val, spacing, seed=1, severity=severity)
        changed = {kind: [float((m != v).sum()) * voxel_ml(spacing) for m, v in zip(maps, val)]
                   for kind, maps in corrupted_copies(val, 1, severity).items()}
        print(json.dumps({
            "severity": severity, "cases": len(val), "auc": study["auc"],
            "reference_mean": float(np.mean(study["reference"])),
            "corrupted_mean": {kind: float(np.mean(study[kind])) for kind in KINDS},
            "flagged": {kind: None if flag is None else float(np.mean(np.asarray(study[kind]) < flag))
                        for kind in ("reference", *KINDS)},
            "changed_ml": {kind: [round(float(f(v)), 2) for f in (np.median, np.min, np.max)] for kind, v in changed.items()},
        }), flush=True)
    reference = [guard.score(v, spacing) for v in val]
    rng = np.random.default_rng(1)
    for kind in OTHER_KINDS:
        maps = [corrupt_labels(v, kind, rng) for v in val]
        scores = [guard.score(m, spacing) for m in maps]
        changed = [float((m != v).sum()) * voxel_ml(spacing) for m, v in zip(maps, val)]
        print(json.dumps({
            "other_error": kind, "severity": 1.0, "auc": roc_auc(reference, scores),
            "flagged": None if flag is None else float(np.mean(np.asarray(scores) < flag)),
            "changed_ml": [round(float(f(changed)), 2) for f in (np.median, np.min, np.max)],
        }), flush=True)
    if args.no_refinement:
        return
    inputs = {"none": val, **corrupted_copies(val, 2)}
    for kind, maps in inputs.items():
        effect = refinement_study(guard, val, maps)
        print(json.dumps({"refinement_on": kind, "severity": 1.0,
                          "dice": {NAMES[c]: {k: round(float(v), 4) for k, v in r.items()} for c, r in effect.items()}}),
              flush=True)


if __name__ == "__main__":
    main()
