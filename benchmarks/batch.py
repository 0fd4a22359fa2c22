"""Batch throughput and memory: N small phantoms through ``segment_batch``, default runner vs Dask.

Each runner segments the same N phantom CTs (``deconvseg.pipeline.phantoms``, NIfTI) into a fresh output
folder, in its own child process (``python -m deconvseg.flows.serve``) against one loopback Prefect server
started here (a real server, as Dask needs one). While it runs, the resident set size of the
batch process and all its children (Dask workers included; the server is not among them) is
sampled every 0.2 s; ``rss_mib_after_10`` is the sample when 10 bundles exist, ``rss_mib_after_50``
when all N do. Flat memory means the two are close: tasks pass paths, results are a few hundred
bytes, and nothing accumulates per case.

    .venv/bin/python benchmarks/batch.py [--cases 50] [--model models/weights/phantom-ct]

Prints one JSON line per runner: ``runner``, ``cases``, ``cases_per_min``, ``rss_mib_after_10``,
``rss_mib_after_50``, plus ``peak_rss_mib``, ``failed``, ``seconds`` (flow), ``wall_s``
(process, with start-up), ``workers``, ``model``, ``shape``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from deconvseg.flows.inputs import DEFAULT_MODEL  # noqa: E402
from deconvseg.flows.prefect_env import local_server, prefect_environment  # noqa: E402


def tree_rss_mib(pid: int) -> float:
    """Resident memory of a process and all its descendants, MiB (0 when it has exited)."""
    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0
    for process in processes:
        try:
            total += process.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total / 2**20


def write_phantoms(folder: Path, cases: int, shape: tuple[int, int, int], spacing: tuple[float, float, float]) -> Path:
    from deconvseg.pipeline.io.volumes import write_volume
    from deconvseg.pipeline.phantoms import make_phantom

    folder.mkdir(parents=True)
    for seed in range(cases):
        write_volume(make_phantom("CT", shape=shape, spacing=spacing, seed=1000 + seed)[0],
                     folder / f"case{seed:03d}.nii.gz")
    return folder


def random_model(folder: Path) -> Path:
    """A one-member random DeconvNet, used only when the bundled model is absent (speed, not accuracy)."""
    from deconvseg.models.registry import build_model
    from deconvseg.pipeline.checkpoints import save_checkpoint
    from deconvseg.pipeline.phantoms import PHANTOM_LABELS

    model = build_model("deconvnet3d", in_channels=1, out_channels=len(PHANTOM_LABELS) + 1, widths=[8, 16, 32, 64])
    meta = {"labels": PHANTOM_LABELS.to_json(), "spacing": [4.0, 4.0, 4.0], "patch_size": [32, 48, 48],
            "normalization": {"scheme": "ct", "clip": [-200.0, 300.0], "mean": 40.0, "std": 100.0}}
    return save_checkpoint(folder, model, meta)


def measure(runner: str, request: dict, env: dict[str, str], cases: int) -> dict:
    """Run one batch child process and sample its memory until it exits."""
    out = Path(request["out"])
    start = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "deconvseg.flows.serve"], env=env, cwd=REPO, stdin=subprocess.PIPE,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    process.stdin.write(json.dumps(request))  # the request travels on stdin, never on the command line
    process.stdin.close()
    after_10 = after_all = None
    peak = 0.0
    while process.poll() is None:
        rss = tree_rss_mib(process.pid)
        peak = max(peak, rss)
        done = len(list(out.glob("*/manifest.json"))) if out.exists() else 0
        if after_10 is None and done >= min(10, cases):
            after_10 = rss
        if after_all is None and done >= cases:
            after_all = rss
        time.sleep(0.2)
    stderr = process.stderr.read()
    summary = json.loads((out / "batch.json").read_text()) if (out / "batch.json").is_file() else None
    if summary is None:
        raise SystemExit(f"{runner}: batch failed (exit {process.returncode}): {stderr[-2000:]}")
    return {"runner": runner, "cases": summary["counts"]["cases"], "cases_per_min": summary["cases_per_min"],
            "rss_mib_after_10": round(after_10 or peak, 1), "rss_mib_after_50": round(after_all or peak, 1),
            "peak_rss_mib": round(peak, 1), "failed": summary["counts"]["failed"], "seconds": summary["seconds"],
            "wall_s": round(time.perf_counter() - start, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=50)
    parser.add_argument("--shape", type=int, nargs=3, default=[24, 48, 48], help="z y x")
    parser.add_argument("--spacing", type=float, nargs=3, default=[4.0, 4.0, 4.0], help="x y z, mm")
    parser.add_argument("--model", type=Path, default=None, help="default: models/weights/phantom-ct")
    parser.add_argument("--runners", default="default,dask", help="comma-separated: default, dask")
    parser.add_argument("--workers", type=int, default=2, help="Dask workers")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="deconvseg-bench-") as tmp:
        root = Path(tmp)
        source = write_phantoms(root / "in", args.cases, tuple(args.shape), tuple(args.spacing))
        model = args.model or (DEFAULT_MODEL if (DEFAULT_MODEL.is_dir() and any(DEFAULT_MODEL.rglob("model.json")))
                               else random_model(root / "random-model"))
        with local_server(root / "prefect-home") as api_url:
            env = prefect_environment(root / "prefect-home", api_url=api_url)
            for runner in args.runners.split(","):
                dask = runner == "dask"
                request = {"source": str(source), "out": str(root / f"out-{runner}"), "model": str(model),
                           "config": {"threads": 1 if dask else 2, "dashboard_key": f"bench-{runner}"},
                           "dask_workers": args.workers if dask else None}
                result = measure(runner, request, env, args.cases)
                print(json.dumps({**result, "workers": args.workers if dask else 1, "model": str(model),
                                  "shape": args.shape}), flush=True)


if __name__ == "__main__":
    main()
