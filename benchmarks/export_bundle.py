"""Time writing a review bundle for the TotalSegmentator DICOM example (512 x 512 x 20 CT, 31 structures),
or with ``--ct-scale`` for a 512 x 512 x 250 CT phantom (4 organs) with a generated DICOM series.

    python benchmarks/export_bundle.py [--repeats 3] [--data ../shared/data] [--ct-scale]

Prints one JSON line: median wall and CPU seconds per bundle (reading excluded; CPU time is the
figure to compare on a shared machine, with the load average beside it), median seconds per stage
(``BundleSummary.timings``), bundle size, SEG size and the peak resident memory of the process.
There is no peer to compare with here: rt-utils and pydicom-seg cannot be installed beside
Prefect 3 (see ENVIRONMENT.md), so no ratio is reported.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from deconvseg.pipeline.export.bundle import write_bundle
from deconvseg.pipeline.export.label_tables import complete_table, read_label_file, with_codes
from deconvseg.pipeline.io.volumes import read_volume
from deconvseg.pipeline.labels import LabelTable


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--ct-scale", action="store_true", help="512 x 512 x 250 phantom, DICOM series generated")
    args = parser.parse_args()
    if args.ct_scale:
        from deconvseg.pipeline.phantoms import PHANTOM_LABELS, make_phantom

        image, labels = make_phantom("CT", shape=(250, 512, 512), spacing=(0.8, 0.8, 1.5), seed=0)
        table, name = PHANTOM_LABELS, "export_bundle_ct_phantom_512x512x250"
    else:
        root = args.data / "totalsegmentator_example"
        image = read_volume(root / "example_ct_dicom")
        labels = read_volume(root / "example_seg_dicom.nii.gz", kind="label")
        present = np.unique(labels.array).tolist()
        named = read_label_file(root / "class_map_total_and_total_mr.json", "total")
        table = with_codes(complete_table(LabelTable(tuple(lb for lb in named if lb.value in present)), present))
        name = "export_bundle_totalsegmentator_dicom"
    totals, cpu, stages = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            start, start_cpu = time.perf_counter(), time.process_time()
            summary = write_bundle(Path(tmp) / f"case{repeat}", image, labels, table, dicom_series=True)
            totals.append(time.perf_counter() - start)
            cpu.append(time.process_time() - start_cpu)
            stages.append(summary.timings)
        size = sum(p.stat().st_size for p in summary.path.rglob("*") if p.is_file())
        seg_size = (summary.path / "seg.dcm").stat().st_size
    print(json.dumps({
        "benchmark": name, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "shape_zyx": list(image.shape), "structures": len(table), "repeats": args.repeats,
        "seconds_median": round(statistics.median(totals), 2), "cpu_seconds_median": round(statistics.median(cpu), 2),
        "load_average_1min": round(os.getloadavg()[0], 1),
        "stage_seconds_median": {k: round(statistics.median(s[k] for s in stages), 2) for k in stages[0]},
        "bundle_mb": round(size / 2**20, 1), "seg_mb": round(seg_size / 2**20, 1),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
    }))


if __name__ == "__main__":
    main()
