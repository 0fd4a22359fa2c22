"""``deconvseg.pipeline.metrics`` against MONAI's HD95 + surface Dice on ACDC labels: agreement and CPU time.

For each of the first N ACDC volumes (../shared/data/acdc), the reference label is perturbed (shifted
in-plane, myocardium eroded) to make a prediction; both implementations score RV/MYO/LV. Prints one
JSON line: ``cases``, ``shape`` (of the first), ``ours_s`` and ``monai_s`` (median seconds per case for
HD95 + surface Dice of the three classes), ``speedup``, ``max_abs_diff_hd95_mm``, ``max_abs_diff_nsd``.

    nice -n 10 .venv/bin/python benchmarks/metrics.py --cases 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import h5py
import numpy as np
import torch
from monai.metrics import compute_hausdorff_distance, compute_surface_dice
from scipy import ndimage

from deconvseg.pipeline import metrics

ACDC = Path(__file__).resolve().parents[2] / "shared" / "data" / "acdc" / "volumes"
SPACING = (1.5, 1.5, 10.0)  # x, y, z mm: a typical ACDC grid (the HDF5 files carry no spacing)
NAMES = {1: "rv", 2: "myo", 3: "lv"}


def _prediction(ref: np.ndarray) -> np.ndarray:
    pred = ndimage.shift(ref, (0, 2, -1), order=0)
    myo = pred == 2
    pred[myo & ~ndimage.binary_erosion(myo)] = 0
    return pred


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=5)
    parser.add_argument("--tolerance", type=float, default=2.0)
    args = parser.parse_args()
    torch.set_num_threads(2)
    zyx = tuple(reversed(SPACING))
    ours_t, monai_t, d_hd, d_nsd, shape = [], [], 0.0, 0.0, None
    for path in sorted(ACDC.glob("*.h5"))[: args.cases]:
        with h5py.File(path) as fh:
            ref = fh["label"][()].astype(np.int64)
        shape = shape or list(ref.shape)
        pred = _prediction(ref)
        start = time.perf_counter()
        ours = metrics.label_metrics(pred, ref, NAMES, SPACING, args.tolerance)
        ours_t.append(time.perf_counter() - start)

        def one_hot(a: np.ndarray) -> torch.Tensor:
            return torch.nn.functional.one_hot(torch.from_numpy(a), 4).permute(3, 0, 1, 2)[None].float()

        start = time.perf_counter()
        p, r = one_hot(pred), one_hot(ref)
        hd = compute_hausdorff_distance(p, r, include_background=False, percentile=95, spacing=zyx)[0]
        nsd = compute_surface_dice(p, r, [args.tolerance] * 3, include_background=False, spacing=zyx)[0]
        monai_t.append(time.perf_counter() - start)
        d_hd = max(d_hd, max(abs(ours["hd95"][n] - float(hd[i])) for i, n in enumerate(NAMES.values())))
        d_nsd = max(d_nsd, max(abs(ours["surface_dice"][n] - float(nsd[i])) for i, n in enumerate(NAMES.values())))
    o, m = statistics.median(ours_t), statistics.median(monai_t)
    print(json.dumps({"cases": len(ours_t), "shape": shape, "ours_s": round(o, 4), "monai_s": round(m, 4),
                      "speedup": round(m / o, 1), "max_abs_diff_hd95_mm": round(d_hd, 6),
                      "max_abs_diff_nsd": round(d_nsd, 6)}))


if __name__ == "__main__":
    main()
