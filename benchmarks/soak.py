"""Soak: N phantom cases (200 by default) through the batch flow; memory must stay flat.

One ``python -m deconvseg.flows.serve`` batch (default thread runner) against a loopback Prefect server
started here; the resident set size of the batch process and its children is sampled each time
10 more bundles exist. Every 25th input is corrupt (truncated), so failure handling soaks too.

    .venv/bin/python benchmarks/soak.py [--cases 200] [--model models/weights/phantom-ct]

Ends with one JSON line: ``cases``, ``rss_mib_first`` (after the first 10 bundles),
``rss_mib_last`` (after the last), ``failures``, plus ``rss_mib_samples``, ``cases_per_min``,
``wall_s``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from batch import random_model, tree_rss_mib, write_phantoms  # noqa: E402
from deconvseg.flows.inputs import DEFAULT_MODEL  # noqa: E402
from deconvseg.flows.prefect_env import local_server, prefect_environment  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=200)
    parser.add_argument("--shape", type=int, nargs=3, default=[32, 64, 64], help="z y x")
    parser.add_argument("--spacing", type=float, nargs=3, default=[4.0, 4.0, 6.0], help="x y z, mm")
    parser.add_argument("--model", type=Path, default=None, help="default: models/weights/phantom-ct")
    parser.add_argument("--corrupt-every", type=int, default=25)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="deconvseg-soak-") as tmp:
        root = Path(tmp)
        source = write_phantoms(root / "in", args.cases, tuple(args.shape), tuple(args.spacing))
        for index, path in enumerate(sorted(source.iterdir())):
            if args.corrupt_every and index % args.corrupt_every == args.corrupt_every - 1:
                path.write_bytes(path.read_bytes()[:200])
        model = args.model or (DEFAULT_MODEL if any(DEFAULT_MODEL.rglob("model.json")) else random_model(root / "m"))
        out = root / "out"
        request = {"source": str(source), "out": str(out), "model": str(model),
                   "config": {"threads": 2, "dashboard_key": "soak"}}
        with local_server(root / "prefect-home") as api_url:
            start = time.perf_counter()
            process = subprocess.Popen([sys.executable, "-m", "deconvseg.flows.serve"], cwd=REPO,
                                       env=prefect_environment(root / "prefect-home", api_url=api_url),
                                       stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                       text=True)
            process.stdin.write(json.dumps(request))  # on stdin, never on the command line
            process.stdin.close()
            samples: list[tuple[int, float]] = []
            while process.poll() is None:
                done = len(list(out.glob("*/manifest.json"))) if out.exists() else 0
                if done >= 10 * (len(samples) + 1):
                    samples.append((done, round(tree_rss_mib(process.pid), 1)))
                time.sleep(0.2)
            stderr = process.stderr.read()
        if not (out / "batch.json").is_file():
            raise SystemExit(f"soak batch failed (exit {process.returncode}): {stderr[-2000:]}")
        summary = json.loads((out / "batch.json").read_text())
        print(json.dumps({"cases": summary["counts"]["cases"], "rss_mib_first": samples[0][1] if samples else None,
                          "rss_mib_last": samples[-1][1] if samples else None,
                          "failures": summary["counts"]["failed"], "rss_mib_samples": samples,
                          "cases_per_min": summary["cases_per_min"], "wall_s": round(time.perf_counter() - start, 1),
                          "model": str(model), "shape": args.shape}))


if __name__ == "__main__":
    main()
