"""GPU check of the training plumbing: one ACDC member for a fixed number of steps on the GPU and on the CPU.

For each device it trains ``--member`` of ``configs/acdc.yaml`` for ``--steps`` steps (validation on
``--val-cases`` cases of val.list at the end only, resume checkpoints off), and prints one JSON line:
steps/s and patches/s after ``--warmup`` steps, the final validation Dice, peak GPU memory
(``torch.cuda.max_memory_allocated``), precision and loader workers. A last line compares them and
checks that the GPU-trained checkpoint loads on the CPU and segments the validation cases there with
the Dice it had on the GPU. Needs a CUDA GPU (exits 2 with one line otherwise); ``--device cpu`` runs
the same script on the CPU, to check the script itself.

    .venv/bin/python benchmarks/train_gpu.py --steps 300 --cpu-steps 30 --workers 4
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from deconvseg.pipeline.checkpoints import load_checkpoint
from deconvseg.pipeline.config import load_config
from deconvseg.pipeline.training.data import load_training_data
from deconvseg.pipeline.training.trainer import TrainConfig, member_settings, train_member, validate

REPO = Path(__file__).resolve().parents[1]


def run(config: TrainConfig, data, member, steps: int, warmup: int, folder: Path) -> dict:
    """Train ``member`` for ``steps`` steps; steps/s over the steps after ``warmup``, final val Dice."""
    marks: dict[int, float] = {}
    device = torch.device(config.device)

    def callback(event) -> None:
        if not event.validated and event.step in (warmup, steps):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            marks[event.step] = time.perf_counter()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    meta = train_member(config, member, data, folder, callback)
    seconds = marks[steps] - marks[warmup]
    batch = member_settings(config, member)["batch_size"]
    return {
        "device": config.device, "name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "steps": steps, "steps_per_s": round((steps - warmup) / seconds, 2),
        "patches_per_s": round((steps - warmup) * batch / seconds, 1),
        "val_mean_dice": round(meta["metrics"]["mean_dice"], 4), "val_dice": meta["metrics"]["val_dice"],
        "peak_gpu_mib": round(torch.cuda.max_memory_allocated(device) / 2**20) if device.type == "cuda" else None,
        "precision": meta["training"]["precision"], "loader_workers": config.loader.num_workers,
        "threads": torch.get_num_threads(),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "acdc.yaml")
    parser.add_argument("--member", default="deconvnet-add-s1")
    parser.add_argument("--steps", type=int, default=300, help="GPU steps")
    parser.add_argument("--cpu-steps", type=int, default=30, help="CPU steps (0: skip the CPU run)")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--workers", type=int, default=4, help="loader workers on the GPU run")
    parser.add_argument("--val-cases", type=int, default=5)
    parser.add_argument("--precision", default="mixed")
    parser.add_argument("--cpu-threads", type=int, default=os.cpu_count())
    parser.add_argument("--device", default="cuda:0", help="device of the first run")
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("error: no CUDA device here; run this check on a GPU machine", file=sys.stderr)
        return 2

    base = load_config(args.config, TrainConfig)
    root = Path(base.data.root) if Path(base.data.root).is_absolute() else (REPO / base.data.root).resolve()
    with tempfile.TemporaryDirectory() as tmp:
        val = Path(tmp) / "val.list"
        val.write_text("\n".join((root / base.data.val_split).read_text().split()[: args.val_cases]) + "\n")
        common = {**base.model_dump(), "val_every": 10**9, "val_at": (), "checkpoint_every": 10**9,
                  "time_budget_s": None, "precision": args.precision,
                  "data": {**base.data.model_dump(), "root": str(root), "val_split": str(val)}}
        started = time.perf_counter()
        data = load_training_data(TrainConfig(**common).data)
        print(json.dumps({"data_load_s": round(time.perf_counter() - started, 1), "train_cases": len(data.train),
                          "val_cases": len(data.val)}), flush=True)
        member = next(m for m in base.members if m.name == args.member)
        results = []
        gpu = TrainConfig(**{**common, "steps": args.steps, "device": args.device,
                             "loader": {"num_workers": args.workers}})
        torch.set_num_threads(max(1, (os.cpu_count() or 2) - args.workers))
        results.append(run(gpu, data, member, args.steps, args.warmup, Path(tmp) / "gpu"))
        print(json.dumps(results[-1]), flush=True)
        if args.cpu_steps:
            cpu = TrainConfig(**{**common, "steps": args.cpu_steps, "device": "cpu", "loader": {"num_workers": 0}})
            torch.set_num_threads(args.cpu_threads)
            results.append(run(cpu, data, member, args.cpu_steps, min(args.warmup, args.cpu_steps // 3), Path(tmp) / "cpu"))
            print(json.dumps(results[-1]), flush=True)
        # The GPU-trained checkpoint on the CPU: same validation Dice as on the GPU (same precision policy).
        model, meta = load_checkpoint(Path(tmp) / "gpu", device="cpu")
        scores = validate(model, data.val, len(data.labels.names) + 1, tuple(meta["patch_size"]), None, gpu, "cpu")
        cpu_dice = sum(sum(case) for case in scores) / sum(len(case) for case in scores)
        summary = {"gpu_vs_cpu_steps_per_s": round(results[0]["steps_per_s"] / results[1]["steps_per_s"], 1)
                   if len(results) > 1 else None,
                   "gpu_checkpoint_on_cpu_mean_dice": round(cpu_dice, 4),
                   "gpu_checkpoint_on_gpu_mean_dice": results[0]["val_mean_dice"]}
        print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
