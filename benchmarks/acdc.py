"""ACDC accuracy benchmark: each trained model and the fused ensemble on the validation split.

Prints one JSON line per model: ``model``, ``mean_dice`` (RV, MYO, LV), ``dice`` and ``hd95`` per
class, ``train_s`` (training seconds read from ``model.json``; for the ensemble the sum over its
members, with ``train_wall_s`` the longest member when they ran in parallel), ``params`` and
``infer_s_per_volume`` (``segment_case`` on the input grid, 2 threads).

By default the committed checkpoints are scored (no retraining). ``--retrain`` first trains
``configs/acdc.yaml`` (one process per member, in parallel) and ``configs/acdc-deconvnet-pure.yaml``.
``--model`` scores only the given folders (e.g. one per process, to use both cores).

    .venv/bin/python benchmarks/acdc.py [--data ../shared/data/acdc] [--model DIR ...] [--overlap 0.25] [--window fit] [--mirror-axes 1 2]
        [--retrain]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

ENSEMBLE = REPO / "models" / "weights" / "acdc"
BASELINES = REPO / "models" / "weights" / "acdc-baselines"


def retrain() -> None:
    """Train the ensemble members in parallel processes, then the pure-switch baseline."""
    import yaml

    cli = [sys.executable, "-c", "from deconvseg.flows.cli import app; app()", "train"]
    config = REPO / "configs" / "acdc.yaml"
    members = [m["name"] for m in yaml.safe_load(config.read_text())["members"]]
    jobs = [subprocess.Popen([*cli, str(config), "--member", m, "--quiet"], cwd=REPO) for m in members]
    jobs.append(subprocess.Popen([*cli, str(REPO / "configs" / "acdc-deconvnet-pure.yaml"), "--quiet"], cwd=REPO))
    if any(job.wait() for job in jobs):
        raise SystemExit("a training process failed")
    subprocess.run([*cli, str(config), "--quiet"], cwd=REPO, check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "acdc"))
    parser.add_argument("--split", default=None, help="list file (default: <data>/splits/val.list)")
    parser.add_argument("--model", action="append", default=None,
                        help="checkpoint or ensemble folder (repeatable; default: every member, the baselines, the ensemble)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--overlap", type=float, default=None, help="sliding-window overlap (default: InferenceConfig's)")
    parser.add_argument("--window", choices=["patch", "fit"], default="patch",
                        help="sliding windows of the training patch, or fewer larger ones (InferenceConfig.window)")
    parser.add_argument("--mirror-axes", type=int, nargs="*", default=[],
                        help="test-time mirroring over these axes (0=z, 1=y, 2=x), e.g. --mirror-axes 1 2")
    parser.add_argument("--retrain", action="store_true", help="train everything first (about an hour)")
    args = parser.parse_args()
    if args.retrain:
        retrain()

    import torch

    from deconvseg.pipeline.ensemble import load_ensemble
    from deconvseg.pipeline.evaluation import evaluate_members, read_eval_cases
    from deconvseg.pipeline.segment import InferenceConfig

    torch.set_num_threads(args.threads)
    cases = read_eval_cases(args.data, args.split or Path(args.data) / "splits" / "val.list")
    options = {"overlap": args.overlap} if args.overlap is not None else {}
    config = InferenceConfig(threads=args.threads, mirror_axes=tuple(args.mirror_axes), window=args.window, **options)
    folders = [Path(m) for m in args.model] if args.model else [
        *sorted(p for root in (ENSEMBLE, BASELINES) if root.is_dir() for p in root.iterdir() if (p / "model.json").is_file()),
        ENSEMBLE,
    ]
    for folder in folders:
        ensemble = load_ensemble(folder)
        single = (folder / "model.json").is_file()
        # A single member is scored without refinement; an ensemble with its ensemble.json (fusion + plan).
        if single:
            ensemble = ensemble.with_settings(postprocess=None)
        result = evaluate_members(cases, ensemble, config)
        name = f"{folder.parent.name}/{folder.name}" if single else f"{folder.name} ensemble ({len(ensemble.members)} members)"
        if args.mirror_axes:
            name += f", mirrored over axes {args.mirror_axes}"
        if args.overlap is not None:
            name += f", overlap {args.overlap:g}"
        if args.window != "patch":
            name += f", {args.window} windows"
        print(json.dumps(row(name, result, ensemble.specs)), flush=True)


def row(name: str, result: dict, specs: list) -> dict:
    """One JSON line from an evaluation result and the members' specs."""
    seconds = [spec.training.get("seconds", 0.0) for spec in specs]
    out = {
        "model": name,
        "mean_dice": round(result["mean_dice"], 4),
        "dice": {k: round(v, 4) for k, v in result["dice"].items()},
        "hd95": {k: None if v is None else round(v, 2) for k, v in result["hd95"].items()},
        "train_s": round(sum(seconds), 1),
        "params": sum(int(spec.training["params"]) for spec in specs),
        "infer_s_per_volume": round(result["infer_s_per_volume"], 3),
        "cases": result["cases"],
    }
    if len(specs) > 1:
        out["train_wall_s"] = round(max(seconds), 1)
    return out


if __name__ == "__main__":
    main()
