"""Does each shipped model know when it does not apply? The acceptance figures of issue 14, through the CLI.

Prints one JSON line per check:

- ``acdc_val``: every ``splits/val.list`` volume written as NIfTI at 1.5625 x 1.5625 x 10 mm and run
  through ``deconvseg segment --model acdc``: cases with case flags, and per structure the
  ``high_uncertainty`` rate and the mean Dice of flagged and unflagged structures (Dice from the
  bundle's ``labels.nii.gz`` against the reference);
- ``phantom_fresh``: ``--phantoms N`` phantom CTs with seeds never used in training or calibration
  (300...) through ``--model phantom-ct``: cases with case flags;
- ``totalsegmentator_ct``: the TotalSegmentator example CT with ``phantom-ct`` (flags), with ``acdc``
  (exit status, anything written, the error line) and with ``acdc --allow-domain-mismatch`` (flags).

    .venv/bin/python benchmarks/domain_acceptance.py [--out DIR] [--phantoms 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
CLI = [sys.executable, "-c", "from deconvseg.flows.cli import app; app()"]


def segment(inputs: list[Path], out: Path, model: str, threads: int, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, "segment", *map(str, inputs), "--out", str(out), "--model", model,
                           "--threads", str(threads), "--json", *extra], capture_output=True, text=True)


def case_flags(bundle: Path) -> list[dict]:
    return json.loads((bundle / "qa.json").read_text())["case_flags"]


def acdc_val(work: Path, threads: int) -> dict:
    from deconvseg.pipeline.io.datasets import read_acdc
    from deconvseg.pipeline.io.volumes import read_volume, write_volume
    from deconvseg.pipeline.metrics import dice

    root = DATA / "acdc"
    cases = read_acdc(root, root / "splits" / "val.list")
    (work / "acdc-in").mkdir(parents=True, exist_ok=True)
    paths = [write_volume(case.image, work / "acdc-in" / f"{case.case_id}.nii.gz") for case in cases]
    done = segment(paths, work / "acdc-out", "acdc", threads)
    if done.returncode:
        raise SystemExit(done.stderr)
    flagged_cases, per_structure = {}, {}
    for case in cases:
        bundle = work / "acdc-out" / case.case_id
        flags = case_flags(bundle)
        if flags:
            flagged_cases[case.case_id] = flags
        labels = read_volume(bundle / "labels.nii.gz", kind="label").array
        for row in json.loads((bundle / "stats.json").read_text()):
            score = dice(labels == row["value"], case.label.array == row["value"])
            per_structure.setdefault(row["name"], []).append(("high_uncertainty" in row["flags"], score))
    structures = {}
    for name, pairs in per_structure.items():
        flagged = [d for f, d in pairs if f]
        unflagged = [d for f, d in pairs if not f]
        structures[name] = {"high_uncertainty_rate": round(len(flagged) / len(pairs), 3),
                            "dice_flagged": round(float(np.mean(flagged)), 4) if flagged else None,
                            "dice_unflagged": round(float(np.mean(unflagged)), 4) if unflagged else None}
    every = [f for pairs in per_structure.values() for f in pairs]
    flagged = [d for f, d in every if f]
    return {"check": "acdc_val", "cases": len(cases), "cases_with_case_flags": len(flagged_cases),
            "case_flags": flagged_cases, "structures": structures,
            "all_structures": {"high_uncertainty_rate": round(len(flagged) / len(every), 3),
                               "dice_flagged": round(float(np.mean(flagged)), 4) if flagged else None,
                               "dice_unflagged": round(float(np.mean([d for f, d in every if not f])), 4)}}


def phantom_fresh(work: Path, count: int, threads: int) -> dict:
    from deconvseg.pipeline.io.volumes import write_volume
    from deconvseg.pipeline.phantoms import make_phantom

    paths = []
    (work / "phantom-in").mkdir(parents=True, exist_ok=True)
    for seed in range(300, 300 + count):
        image, _ = make_phantom("CT", shape=(64, 128, 128), spacing=(2.0, 2.0, 3.0), seed=seed)
        paths.append(write_volume(image, work / "phantom-in" / f"phantom_{seed}.nii.gz"))
    done = segment(paths, work / "phantom-out", "phantom-ct", threads)
    if done.returncode:
        raise SystemExit(done.stderr)
    flags = {p.name.split(".")[0]: case_flags(work / "phantom-out" / p.name.split(".")[0]) for p in paths}
    return {"check": "phantom_fresh", "cases": count, "seeds": [300, 300 + count - 1],
            "cases_with_case_flags": sum(bool(f) for f in flags.values()),
            "case_flags": {k: v for k, v in flags.items() if v}}


def totalsegmentator_ct(work: Path, threads: int) -> dict:
    ct = DATA / "totalsegmentator_example" / "example_ct.nii.gz"
    result = {"check": "totalsegmentator_ct", "input": str(ct)}
    done = segment([ct], work / "ts-phantom", "phantom-ct", threads)
    result["phantom_ct"] = {"exit": done.returncode, "line": done.stderr.strip().splitlines()[-1],
                            "case_flags": case_flags(work / "ts-phantom" / "example_ct")}
    refused = segment([ct], work / "ts-acdc", "acdc", threads)
    result["acdc"] = {"exit": refused.returncode, "written": (work / "ts-acdc").exists(),
                      "stderr": refused.stderr.strip()}
    allowed = segment([ct], work / "ts-acdc-allowed", "acdc", threads, "--allow-domain-mismatch")
    result["acdc_allowed"] = {"exit": allowed.returncode, "line": allowed.stderr.strip().splitlines()[-1],
                              "case_flags": case_flags(work / "ts-acdc-allowed" / "example_ct")}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="working folder (default: a temporary one)")
    parser.add_argument("--phantoms", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--only", nargs="+", choices=["acdc_val", "phantom_fresh", "totalsegmentator_ct"])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.out or Path(tmp)
        checks = args.only or ["acdc_val", "phantom_fresh", "totalsegmentator_ct"]
        if "acdc_val" in checks:
            print(json.dumps(acdc_val(work, args.threads)), flush=True)
        if "phantom_fresh" in checks:
            print(json.dumps(phantom_fresh(work, args.phantoms, args.threads)), flush=True)
        if "totalsegmentator_ct" in checks:
            print(json.dumps(totalsegmentator_ct(work, args.threads)), flush=True)


if __name__ == "__main__":
    main()
