"""Training throughput of a config's members: steps/s, patches/s and CPU seconds per step.

For every member and every loader-worker count, ``train_member`` runs ``--warmup + --steps`` steps
(validation and resume checkpoints pushed past the end, except the final validation, which is not
timed); the clock runs from the end of the warm-up steps to the last step. CPU seconds are those of
the whole process tree (the training process and its loader workers), so "per CPU second" compares
fairly across worker counts. One JSON line per measurement.

    .venv/bin/python benchmarks/train_throughput.py configs/acdc.yaml --workers 0 1 2 --steps 20
    .venv/bin/python benchmarks/train_throughput.py configs/acdc.yaml --device cuda --workers 0 4

``--cases`` keeps only the first N training cases (and one validation case) so that the data is
ready in seconds; the sampler's cost per patch does not depend on the number of cases.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import psutil
import torch

from deconvseg.pipeline.config import load_config
from deconvseg.pipeline.training.data import load_training_data
from deconvseg.pipeline.training.trainer import TrainConfig, member_settings, train_member


def tree_cpu_seconds() -> float:
    """User + system CPU seconds of this process and its live children (loader workers)."""
    me = psutil.Process()
    total = sum(me.cpu_times()[:2])
    for child in me.children(recursive=True):
        try:
            total += sum(child.cpu_times()[:2])
        except psutil.NoSuchProcess:
            pass
    return total


def subset_splits(config: TrainConfig, cases: int, folder: Path) -> dict:
    """Data overrides keeping the first ``cases`` training cases and the first validation case."""
    data = config.data.model_dump()
    if config.data.kind != "acdc" or not cases:
        return data
    root = Path(config.data.root)
    for key, keep in (("train_split", cases), ("val_split", 1)):
        split = Path(data[key]) if Path(data[key]).is_absolute() else root / data[key]
        names = split.read_text().split()[:keep]
        path = folder / f"{key}.list"
        path.write_text("\n".join(names) + "\n")
        data[key] = str(path)
    return data


def measure(config: TrainConfig, member, data, steps: int, warmup: int, folder: Path) -> dict:
    """Train ``member`` for ``warmup + steps`` steps; time the last ``steps``."""
    marks: dict[int, tuple[float, float]] = {}

    def callback(event) -> None:
        if not event.validated and event.step in (warmup, warmup + steps):
            marks[event.step] = (time.perf_counter(), tree_cpu_seconds())

    train_member(config, member, data, folder, callback)
    (w0, c0), (w1, c1) = marks[warmup], marks[warmup + steps]
    batch = member_settings(config, member)["batch_size"]
    return {"steps_per_s": round(steps / (w1 - w0), 3), "patches_per_s": round(steps * batch / (w1 - w0), 2),
            "cpu_s_per_step": round((c1 - c0) / steps, 3), "steps_per_cpu_s": round(steps / (c1 - c0), 3),
            "wall_s": round(w1 - w0, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", type=Path)
    parser.add_argument("--members", nargs="*", help="member names (default: all)")
    parser.add_argument("--workers", nargs="*", type=int, default=[0, 1, 2], help="loader worker counts")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--cases", type=int, default=20, help="training cases kept (0: all)")
    parser.add_argument("--device", default=None, help="auto | cpu | cuda[:N] | mps (default: the config's)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: the config's)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=JSON", help="config overrides, e.g. channels_last=true")
    args = parser.parse_args()

    base = load_config(args.config, TrainConfig)
    with tempfile.TemporaryDirectory() as tmp:
        overrides = {key: json.loads(value) for key, value in (item.split("=", 1) for item in args.set)}
        overrides.update(data=subset_splits(base, args.cases, Path(tmp)), val_every=10**9, val_at=(),
                         checkpoint_every=10**9, time_budget_s=None, steps=args.warmup + args.steps)
        for key in ("device", "threads"):
            if getattr(args, key) is not None:
                overrides[key] = getattr(args, key)
        started = time.perf_counter()
        data = load_training_data(TrainConfig(**{**base.model_dump(), **overrides}).data)
        load_s = time.perf_counter() - started
        for workers in args.workers:
            loader = {**base.loader.model_dump(), "num_workers": workers}
            config = TrainConfig(**{**base.model_dump(), **overrides, "loader": loader})
            torch.set_num_threads(config.threads)  # the caller's job, not the library's
            for member in config.members:
                if args.members and member.name not in args.members:
                    continue
                result = measure(config, member, data, args.steps, args.warmup, Path(tmp) / f"{member.name}-{workers}")
                print(json.dumps({
                    "benchmark": "train_throughput", "config": str(args.config), "member": member.name,
                    "arch": member.arch, "device": config.device, "precision": config.precision,
                    "channels_last": config.channels_last, "loader_workers": workers, "threads": config.threads,
                    "batch_size": member_settings(config, member)["batch_size"], "train_cases": len(data.train),
                    **result, "data_load_s": round(load_s, 1), "load_avg_1m": round(os.getloadavg()[0], 2),
                    "cpus": os.cpu_count(), "machine": platform.processor() or platform.machine(),
                    "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
                }), flush=True)


if __name__ == "__main__":
    main()
