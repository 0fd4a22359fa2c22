"""The demo model ``phantom-ct``: each member and the ensemble on fresh phantoms, and its speed on a real CT.

    .venv/bin/python benchmarks/phantom_ct.py [--model models/weights/phantom-ct] [--threads 2]

Accuracy: 5 phantoms never used in training or selection (``make_phantom("CT", shape=(64, 128, 128),
spacing=(2, 2, 3), seed=500..504)``, the training geometry), scored on the input grid; one JSON line per
member (unrefined) and one for the ensemble as stored. Speed: the TotalSegmentator example CT
(``shared/data/totalsegmentator_example/example_ct.nii.gz``) through ``segment_case`` (median of 3 runs
after a warm-up) and once through ``run_case`` (reading, segmenting and writing the whole review bundle);
one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
EXAMPLE = REPO.parent / "shared" / "data" / "totalsegmentator_example" / "example_ct.nii.gz"
SEEDS = range(500, 505)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(REPO / "models" / "weights" / "phantom-ct"))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import torch

    from deconvseg.pipeline.case import CaseConfig, CaseInput, run_case
    from deconvseg.pipeline.ensemble import load_ensemble
    from deconvseg.pipeline.evaluation import evaluate_members
    from deconvseg.pipeline.io.datasets import Case
    from deconvseg.pipeline.io.volumes import read_volume
    from deconvseg.pipeline.phantoms import make_phantom
    from deconvseg.pipeline.segment import InferenceConfig, segment_case

    torch.set_num_threads(args.threads)
    config = InferenceConfig(threads=args.threads)
    cases = [Case(f"phantom_ct_{s}", *make_phantom("CT", shape=(64, 128, 128), spacing=(2.0, 2.0, 3.0), seed=s))
             for s in SEEDS]
    ensemble = load_ensemble(args.model)
    for member in ensemble.members:
        single = load_ensemble(member.folder).with_settings(postprocess=None)
        print(json.dumps(line(member.name, evaluate_members(cases, single, config))), flush=True)
    print(json.dumps(line("ensemble as stored", evaluate_members(cases, ensemble, config))), flush=True)

    if not EXAMPLE.is_file():
        print(json.dumps({"example_ct": None, "skipped": f"{EXAMPLE} is absent"}))
        return
    image = read_volume(EXAMPLE)
    segment_case(image, ensemble, config)  # warm-up: first-call buffers of torch/oneDNN
    times = []
    for _ in range(3):
        start = time.perf_counter()
        result = segment_case(image, ensemble, config)
        times.append(time.perf_counter() - start)
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        run_case(CaseInput("example_ct", EXAMPLE), ensemble, CaseConfig(inference=config), out)
        bundle_s = time.perf_counter() - start
    print(json.dumps({"example_ct": list(image.shape), "spacing": [round(s, 3) for s in image.spacing],
                      "segment_case_s": round(statistics.median(times), 2), "run_case_with_bundle_s": round(bundle_s, 2),
                      "stages": {k: round(v, 3) for k, v in result.timings.items()}, "threads": args.threads}))


def line(name: str, result: dict) -> dict:
    """One JSON line of an evaluation."""
    return {"model": name, "mean_dice": round(result["mean_dice"], 4),
            "dice": {k: round(v, 4) for k, v in result["dice"].items()}, "cases": result["cases"]}


if __name__ == "__main__":
    main()
