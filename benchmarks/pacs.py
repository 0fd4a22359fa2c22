"""PACS throughput against a local Orthanc: series per minute end to end (query, retrieve, segment,
store) and the share of time in transfer vs segmentation.

Starts an Orthanc of its own (``tests/orthanc_support.py``: temporary configuration, 127.0.0.1, a
free port, authentication on), uploads N MR series made from ACDC volumes, and runs one
``deconvseg pacs --once`` pass with the shipped ``acdc`` model, as a user would (a child process
with Prefect's embedded server). Timings come from the pass's ``batch.json``: ``transfer_s`` is
the query plus, per series, the rerun check, the WADO-RS retrieval and the STOW-RS storage;
``segmentation_s`` is the case API's time (read, segment, write the bundle).

    .venv/bin/python benchmarks/pacs.py [--series 8] [--workers 2]

Prints one JSON line: ``series``, ``series_per_min`` (flow time), ``wall_s`` (the command, with
start-up), ``flow_s``, ``transfer_s``, ``segmentation_s``, ``transfer_share``,
``segmentation_share``, ``stored`` (instances), ``failed``, ``workers``, ``model``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from deconvseg.flows.prefect_env import prefect_environment  # noqa: E402
from deconvseg.models import WEIGHTS_ROOT  # noqa: E402
from tests.orthanc_support import PASSWORD, USER, start_orthanc, write_mr_series  # noqa: E402

ACDC = Path(os.environ.get("DECONVSEG_SHARED_DATA", REPO.parent / "shared" / "data")) / "acdc" / "volumes"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2, help="series segmented at once (PacsConfig.max_workers)")
    args = parser.parse_args()
    model = WEIGHTS_ROOT / "acdc"
    with tempfile.TemporaryDirectory(prefix="deconvseg-pacs-bench-") as tmp:
        root = Path(tmp)
        server = start_orthanc(root / "orthanc")
        try:
            volumes = sorted(ACDC.glob("*_frame01.h5"))[: args.series]
            for index, volume in enumerate(volumes):
                server.upload(write_mr_series(volume, root / "series" / volume.stem, f"202601{index % 28 + 1:02d}"))
            config = root / "pacs.yaml"
            config.write_text(f"max_workers: {args.workers}\n")
            env = {**prefect_environment(root / "prefect", api_url=""), "BENCH_PACS_PASSWORD": PASSWORD,
                   "PREFECT_LOGGING_LEVEL": "WARNING"}
            command = [sys.executable, "-c", "from deconvseg.flows.cli import app; app()", "pacs",
                       "--url", server.dicomweb, "--out", str(root / "out"), "--model", str(model),
                       "--user", USER, "--password-env", "BENCH_PACS_PASSWORD", "--since", "20260101",
                       "--config", str(config), "--prefect-home", str(root / "prefect"), "--once"]
            start = time.perf_counter()
            done = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True)
            wall = time.perf_counter() - start
            if done.returncode not in (0, 1):
                raise SystemExit(f"deconvseg pacs failed ({done.returncode}): {done.stderr[-2000:]}")
        finally:
            server.stop()
        summary = json.loads((root / "out" / "batch.json").read_text())
    rows = summary["rows"]
    transfer = summary["pacs"]["query_s"] + sum(
        r.get("timings", {}).get(k, 0.0) for r in rows for k in ("check", "retrieve", "store"))
    segmentation = sum(r.get("timings", {}).get("segment", 0.0) for r in rows)
    both = max(transfer + segmentation, 1e-9)
    print(json.dumps({
        "series": len(rows), "series_per_min": round(60.0 * len(rows) / max(summary["seconds"], 1e-9), 2),
        "wall_s": round(wall, 1), "flow_s": summary["seconds"], "transfer_s": round(transfer, 2),
        "segmentation_s": round(segmentation, 2), "transfer_share": round(transfer / both, 3),
        "segmentation_share": round(segmentation / both, 3),
        "stored": sum(len(r.get("stored") or []) for r in rows), "failed": summary["counts"]["failed"],
        "workers": args.workers, "model": model.name}))


if __name__ == "__main__":
    main()
