"""How close is the memory guard's estimate to the memory ``segment_case`` really takes?

For each phantom size, a fresh child process loads the ensemble and the image, records its
resident set size, runs ``segment_case`` and reports the peak RSS (``ru_maxrss``) above that
baseline; the parent compares it with ``deconvseg.pipeline.guards.estimate_peak_memory`` less the terms
already resident at the baseline (input image, parameters). A ratio above 1 means the guard is
conservative (it refuses early rather than late).

    nice -n 10 .venv/bin/python benchmarks/guards.py [--model models/weights/phantom-ct] [--sizes 64 128]

Prints one JSON line per size: ``shape``, ``spacing``, ``members``, ``estimate_mib`` (whole
case), ``estimate_added_mib`` (without input and parameters), ``measured_added_mib``, ``ratio``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CHILD = """
import json, resource, sys
import psutil, torch
from deconvseg.pipeline.ensemble import load_ensemble
from deconvseg.pipeline.phantoms import make_phantom
from deconvseg.pipeline.segment import InferenceConfig, segment_case
from deconvseg.pipeline.guards import estimate_peak_memory

model, z, xy, spacing = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
ensemble = load_ensemble(model)
image, _ = make_phantom("CT", shape=(z, xy, xy), spacing=(spacing, spacing, 2 * spacing), seed=0)
estimate = estimate_peak_memory(image, ensemble)
base = psutil.Process().memory_info().rss
segment_case(image, ensemble, InferenceConfig(threads=1, memory_budget_mib=1e9))
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"parts": estimate.parts, "base": base, "peak": peak, "members": len(ensemble.members)}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(REPO / "models" / "weights" / "phantom-ct"))
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128], help="in-plane size (z = half)")
    parser.add_argument("--spacing", type=float, default=1.5, help="in-plane mm (z: twice)")
    args = parser.parse_args()
    for xy in args.sizes:
        done = subprocess.run([sys.executable, "-c", CHILD, args.model, str(xy // 2), str(xy), str(args.spacing)],
                              cwd=REPO, capture_output=True, text=True, check=True,
                              env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
        result = json.loads(done.stdout.strip().splitlines()[-1])
        parts = result["parts"]
        added = sum(v for k, v in parts.items() if k not in ("input", "parameters")) / 2**20
        measured = max(result["peak"] - result["base"], 1) / 2**20
        print(json.dumps({"shape": [xy // 2, xy, xy], "spacing": [args.spacing, args.spacing, 2 * args.spacing],
                          "members": result["members"], "estimate_mib": round(sum(parts.values()) / 2**20, 1),
                          "estimate_added_mib": round(added, 1), "measured_added_mib": round(measured, 1),
                          "ratio": round(added / measured, 2)}))


if __name__ == "__main__":
    main()
