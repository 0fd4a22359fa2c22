"""I/O benchmark at CT scale: read, normalise, resample and write a 512x512x250 CT volume.

The volume is made at run time (in a child process, so that its memory does not count) by
resampling the TotalSegmentator example CT (122x101x112 at 3 mm) onto 512x512x250 voxels over
the same extent, and written as .nii.gz into a temporary folder. Then, in this process:

    read_s       read_volume(.nii.gz)                               (SimpleITK reader)
    normalise_s  normalize() with a CT spec fitted on the volume    (fit_s reported apart)
    resample_s   resample_to_spacing(1.5 mm isotropic)              (cubic; back_s: back to the grid)
    write_s      write_volume(float32 .nii.gz)                      (nibabel)

Peers measured in the same run: nibabel reading the same file, SimpleITK writing the same volume.
Prints one JSON line. Usage: ``nice -n 10 .venv/bin/python benchmarks/io.py``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SOURCE = REPO.parent / "shared" / "data" / "totalsegmentator_example" / "example_ct.nii.gz"
SIZE = (512, 512, 250)  # x, y, z


def make_volume(source: Path, out: Path) -> None:
    """Resample ``source`` onto SIZE voxels over its own extent and write it (int16 HU)."""
    import numpy as np

    from deconvseg.pipeline.io.volumes import read_volume, write_volume
    from deconvseg.pipeline.resample import grid_at_spacing, resample_to_grid

    ct = read_volume(source)
    spacing = tuple(n * s / m for n, s, m in zip(ct.size, ct.spacing, SIZE, strict=True))
    big = resample_to_grid(ct, grid_at_spacing(ct, spacing), order=1)
    write_volume(big.with_array(np.rint(big.array).astype(np.int16)), out)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=SOURCE)
    parser.add_argument("--make", type=Path, help=argparse.SUPPRESS)  # child process: only make the volume
    args = parser.parse_args()
    if args.make:
        make_volume(args.source, args.make)
        return

    import nibabel as nib
    import numpy as np
    import SimpleITK as sitk

    from deconvseg.pipeline.io.sitk_bridge import to_sitk
    from deconvseg.pipeline.io.volumes import read_volume, write_volume
    from deconvseg.pipeline.normalize import fit_normalization, normalize
    from deconvseg.pipeline.resample import resample_to_grid, resample_to_spacing

    with tempfile.TemporaryDirectory(prefix="deconvseg-bench-") as tmp:
        path = Path(tmp) / "ct512.nii.gz"
        subprocess.run([sys.executable, __file__, "--source", str(args.source), "--make", str(path)], check=True)
        times: dict[str, float] = {}

        def timed(name, fn, *a, **kw):
            start = time.perf_counter()
            result = fn(*a, **kw)
            times[name] = round(time.perf_counter() - start, 3)
            return result

        image = timed("read_s", read_volume, path)
        spec = timed("fit_s", fit_normalization, "ct", [image])
        normalised = timed("normalise_s", normalize, image, spec)
        working = timed("resample_s", resample_to_spacing, normalised, (1.5, 1.5, 1.5))
        timed("back_s", resample_to_grid, working, image)
        timed("write_s", write_volume, normalised, Path(tmp) / "out.nii.gz")
        peak = peak_rss_mib()
        timed("read_peer_nibabel_s", lambda: np.asarray(nib.load(path).dataobj))
        timed("write_peer_sitk_s", sitk.WriteImage, to_sitk(normalised), str(Path(tmp) / "peer.nii.gz"), True)

    print(json.dumps({
        "benchmark": "io",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "size": list(image.size),
        "spacing": [round(s, 4) for s in image.spacing],
        "working_size": list(working.size),
        **times,
        "peak_rss_mib": round(peak, 1),
        "write_speedup_vs_sitk": round(times["write_peer_sitk_s"] / times["write_s"], 2),
        "read_speedup_vs_nibabel": round(times["read_peer_nibabel_s"] / times["read_s"], 2),
    }))


if __name__ == "__main__":
    main()
