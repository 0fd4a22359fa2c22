"""Ensemble inference at CT scale against a MONAI recipe doing the same work, in one run.

    python benchmarks/ct_scale.py --preset real [--overlap 0.5] [--window fit] [--bf16 | --no-bf16] [--no-crop]
                                  [--compile] [--no-monai]
    python benchmarks/ct_scale.py --preset tiny                # the small networks of the first benchmark
    python benchmarks/ct_scale.py --switches     # seconds per window under bf16 / channels_last / compile

Input: the TotalSegmentator example CT (``shared/data/totalsegmentator_example/example_ct.nii.gz``,
3 mm) resampled (linear, air outside) to 512 x 512 x 250 voxels at 0.8 x 0.8 x 1.5 mm and written as
int16 NIfTI to a temporary folder. Networks: ``members`` randomly initialised DeconvNet3d variants
(concat skips, add skips, concat with one conv per block) built by ``deconvseg.models.registry`` and saved
as an ensemble. Inference speed does not depend on the weights; the label maps of random networks are
noise, the worst case for the stages after it (restore, exports). Presets:

- ``real``: the size we train -- widths 16-32-64-128, 96^3 windows on a 1.5 mm working grid.
- ``tiny``: widths 8-16-32-64, 128^3 windows on a 3 mm grid.

MONAI runs the same windows, overlap and networks, under the same autocast as ours (bf16 on both
sides, or fp32 on both); ours also crops to the body (``InferenceConfig.crop_foreground``, on by
default: ``--no-crop`` turns it off), which the MONAI recipe has no step for.

Each pipeline runs in its own child process, so that peak RSS (``ru_maxrss``) is its own:

- ours: ``load_ensemble`` -> ``run_case``, the path of ``deconvseg segment``: read, domain checks, memory
  guard, ``segment_case`` (resample, crop to the body, normalise, Gaussian sliding window per member,
  fusion, uncertainty, refinement plan, label-consistent restore of labels and uncertainty to the input
  grid in slabs) and every export of the review bundle (labels and uncertainty NIfTI, Slicer seg.nrrd,
  stats, QA, overlays, report, manifest). ``--window fit`` runs fewer, larger windows
  (``InferenceConfig.window``); MONAI keeps the training patch.
- MONAI: ``LoadImaged`` -> ``EnsureChannelFirstd`` -> ``Spacingd`` (3 mm, bilinear) ->
  ``ScaleIntensityRanged`` (the same CT normalisation) -> ``sliding_window_inference`` (Gaussian,
  same patch and overlap) per network, softmax mean -> ``Invertd`` (bilinear back to the input
  grid) -> argmax -> ``SaveImaged`` (NIfTI, uint8): the label map only.

Both use ``torch.set_num_threads(threads)``. Times exclude Python/torch start-up (reported apart
as ``*_process_s``). The last line is one JSON object: ``total_s``, ``peak_rss_mib``, ``stages``,
``monai_total_s``, ``ratio`` (= total_s / monai_total_s), ``voxels``, ``members``, and more.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO.parent / "shared" / "data" / "totalsegmentator_example" / "example_ct.nii.gz"
SHAPE, SPACING = (250, 512, 512), (0.8, 0.8, 1.5)
NORMALIZATION = {"scheme": "ct", "clip": [-1000.0, 1000.0], "mean": 0.0, "std": 300.0}
PRESETS = {
    "real": {"widths": [16, 32, 64, 128], "patch": [96, 96, 96], "working": [1.5, 1.5, 1.5]},
    "tiny": {"widths": [8, 16, 32, 64], "patch": [128, 128, 128], "working": [3.0, 3.0, 3.0]},
}


def variants(widths: list[int]) -> list[dict]:
    """The three member architectures: concat skips, add skips, concat with one conv per block."""
    return [{"widths": widths, "skip": "concat"}, {"widths": widths, "skip": "add"},
            {"widths": widths, "skip": "concat", "convs_per_block": 1}]


def prepare(folder: Path, members: int, preset: dict) -> tuple[Path, Path]:
    """Write the 512x512x250 CT and a random-weight ensemble into ``folder``."""
    import numpy as np
    import torch

    from deconvseg.models.registry import build_model
    from deconvseg.pipeline.checkpoints import save_checkpoint
    from deconvseg.pipeline.io.volumes import read_volume, write_volume
    from deconvseg.pipeline.phantoms import PHANTOM_LABELS
    from deconvseg.pipeline.resample import resample_to_grid
    from deconvseg.pipeline.volume import Volume

    source = read_volume(EXAMPLE)
    centre = source.index_to_world((np.asarray(source.size) - 1) / 2.0)[0]
    extent = source.direction @ ((np.asarray(tuple(reversed(SHAPE))) - 1) * np.asarray(SPACING) / 2.0)
    grid = Volume(np.broadcast_to(np.uint8(0), SHAPE), spacing=SPACING, origin=tuple(centre - extent),
                  direction=source.direction, kind="label")
    image = resample_to_grid(source, grid, order=1, fill=-1024.0)
    image = image.with_array(np.rint(image.array).astype(np.int16))
    ct = write_volume(image, folder / "ct_512x512x250.nii.gz")
    torch.manual_seed(0)
    archs = variants(preset["widths"])
    for k in range(members):
        kwargs = {"in_channels": 1, "out_channels": len(PHANTOM_LABELS) + 1, **archs[k % len(archs)]}
        meta = {"labels": PHANTOM_LABELS.to_json(), "spacing": preset["working"], "patch_size": preset["patch"],
                "normalization": NORMALIZATION, "arch_kwargs": kwargs}
        save_checkpoint(folder / "ensemble" / f"member{k}", build_model("deconvnet3d", **kwargs), meta)
    return ct, folder / "ensemble"


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_ours(ct: Path, model: Path, out: Path, args: argparse.Namespace) -> dict:
    import psutil
    import torch

    from deconvseg.pipeline.case import CaseConfig, CaseInput, run_case
    from deconvseg.pipeline.ensemble import load_ensemble
    from deconvseg.pipeline.guards import estimate_peak_memory
    from deconvseg.pipeline.io.volumes import read_volume
    from deconvseg.pipeline.segment import InferenceConfig

    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    ensemble = load_ensemble(model)
    load_s = time.perf_counter() - start
    inference = InferenceConfig(threads=args.threads, overlap=args.overlap, window=args.window, bf16=args.bf16,
                                crop_foreground=args.crop, compile=args.compile)
    baseline = psutil.Process().memory_info().rss / 2**20
    summary = run_case(CaseInput("ct", ct), ensemble, CaseConfig(inference=inference), out)
    total = time.perf_counter() - start
    peak = _peak_rss_mib()
    # The stages of the bundle's volume files ("export.nifti", "export.seg_nrrd") run on a second thread beside
    # the other exports: stages do not add up to the total, which also holds reading the CT and the manifest.
    stages = {"load_models": load_s, **json.loads((summary.bundle / "manifest.json").read_text())["timings_s"]}
    # The guard (computed after the run: its one-off probe is inside the timed run) against the growth of RSS,
    # counting its terms beyond what is already resident (input, parameters).
    parts = estimate_peak_memory(read_volume(ct), ensemble, window=args.window, overlap=args.overlap).parts
    predicted_added = sum(v for k, v in parts.items() if k not in ("input", "parameters")) / 2**20
    return {"total_s": total, "stages": stages, "peak_rss_mib": peak, "voxels": 512 * 512 * 250,
            "guard_predicted_mib": sum(parts.values()) / 2**20, "guard_added_mib": predicted_added,
            "measured_added_mib": peak - baseline, "bundle_files": sorted(
                str(p.relative_to(summary.bundle)) for p in summary.bundle.rglob("*") if p.is_file())}


def run_monai(ct: Path, model: Path, out: Path, threads: int, overlap: float, bf16: bool) -> dict:
    import numpy as np
    import torch
    from monai.inferers import sliding_window_inference
    from monai.transforms import (AsDiscreted, Compose, EnsureChannelFirstd, Invertd, LoadImaged, SaveImaged,
                                  ScaleIntensityRanged, Spacingd)

    from deconvseg.pipeline.ensemble import load_ensemble

    torch.set_num_threads(threads)
    stages: dict[str, float] = {}
    start = time.perf_counter()
    ensemble = load_ensemble(model)
    stages["load_models"] = time.perf_counter() - start
    lo, hi = NORMALIZATION["clip"]
    mean, std = NORMALIZATION["mean"], NORMALIZATION["std"]
    working = ensemble.members[0].spec.spacing
    pre = Compose([LoadImaged("image"), EnsureChannelFirstd("image"), Spacingd("image", pixdim=working, mode="bilinear"),
                   ScaleIntensityRanged("image", a_min=lo, a_max=hi, b_min=(lo - mean) / std, b_max=(hi - mean) / std,
                                        clip=True)])
    t = time.perf_counter()
    data = pre({"image": str(ct)})
    stages["ingest_spacing_normalize"] = time.perf_counter() - t
    t = time.perf_counter()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        probabilities = None
        for member in ensemble.members:
            roi = tuple(reversed(member.spec.patch_size))  # MONAI arrays are (x, y, z)
            logits = sliding_window_inference(data["image"][None], roi, 1, member.network, overlap=overlap,
                                              mode="gaussian")
            p = torch.softmax(logits.float(), dim=1)
            probabilities = p if probabilities is None else probabilities + p
        data["pred"] = (probabilities / len(ensemble.members))[0]
    stages["inference_fusion"] = time.perf_counter() - t
    t = time.perf_counter()
    data = Invertd("pred", transform=pre, orig_keys="image", nearest_interp=False)(data)
    stages["invert"] = time.perf_counter() - t
    t = time.perf_counter()
    data = AsDiscreted("pred", argmax=True)(data)
    stages["argmax"] = time.perf_counter() - t
    t = time.perf_counter()
    SaveImaged("pred", output_dir=str(out), output_postfix="seg", output_dtype=np.uint8, separate_folder=False,
               resample=False, print_log=False)(data)
    stages["write"] = time.perf_counter() - t
    total = time.perf_counter() - start
    return {"total_s": total, "stages": stages, "peak_rss_mib": _peak_rss_mib(), "shape": list(data["pred"].shape)}


def measure_switches(threads: int, preset: dict, repeats: int = 2) -> dict:
    """Seconds per window of one member (concat variant) under each speed switch, and bf16 agreement."""
    import torch

    from deconvseg.models.registry import build_model
    from deconvseg.pipeline.inference import prepare_predictor
    from deconvseg.pipeline.phantoms import PHANTOM_LABELS

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    patch = preset["patch"]
    net = build_model("deconvnet3d", in_channels=1, out_channels=len(PHANTOM_LABELS) + 1,
                      **variants(preset["widths"])[0]).eval()
    x = torch.randn(1, 1, *patch)
    results, reference = {}, None
    for name, switches in [("fp32", {}), ("channels_last", {"channels_last": True}), ("bf16", {"bf16": True}),
                           ("bf16+channels_last", {"bf16": True, "channels_last": True}),
                           ("compile", {"compile": True}), ("compile+bf16", {"compile": True, "bf16": True})]:
        predict = prepare_predictor(net, **switches)
        start = time.perf_counter()
        out = predict(x)  # first call: compiles where asked
        first = time.perf_counter() - start
        start = time.perf_counter()
        for _ in range(repeats):
            out = predict(x)
        results[name] = {"first_s": round(first, 3), "window_s": round((time.perf_counter() - start) / repeats, 3)}
        if reference is None:
            reference = out
        results[name]["argmax_agreement_with_fp32"] = round(float((out.argmax(1) == reference.argmax(1)).float().mean()), 4)
        net = net.to(memory_format=torch.contiguous_format)
    return {"switches": results, "patch": patch, "threads": threads}


def _child(which: str, args: argparse.Namespace, folder: Path, ct: Path, model: Path) -> dict:
    out = folder / f"out-{which}"
    out.mkdir(exist_ok=True)
    command = [sys.executable, __file__, "--child", which, "--ct", str(ct), "--model", str(model), "--out", str(out),
               "--threads", str(args.threads), "--overlap", str(args.overlap), "--window", args.window,
               "--bf16" if args.bf16 else "--no-bf16",
               "--crop" if args.crop else "--no-crop", "--compile" if args.compile else "--no-compile"]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False, cwd=REPO)
    if done.returncode != 0:
        raise RuntimeError(f"{which} pipeline failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["process_s"] = time.perf_counter() - start
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--members", type=int, default=3)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="real")
    parser.add_argument("--overlap", type=float, default=0.5)
    parser.add_argument("--window", choices=["patch", "fit"], default="patch", help="ours: InferenceConfig.window")
    parser.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=True, help="both pipelines")
    parser.add_argument("--crop", action=argparse.BooleanOptionalAction, default=True, help="ours: body crop")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=False, help="ours: torch.compile")
    parser.add_argument("--monai", action=argparse.BooleanOptionalAction, default=True, help="run the MONAI recipe")
    parser.add_argument("--switches", action="store_true", help="only time the speed switches on one window")
    parser.add_argument("--child", choices=["ours", "monai"])
    parser.add_argument("--ct", type=Path)
    parser.add_argument("--model", type=Path)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    preset = PRESETS[args.preset]
    if args.switches:
        print(json.dumps(measure_switches(args.threads, preset)))
        return
    if args.child == "ours":
        print(json.dumps(run_ours(args.ct, args.model, args.out, args)))
        return
    if args.child == "monai":
        print(json.dumps(run_monai(args.ct, args.model, args.out, args.threads, args.overlap, args.bf16)))
        return
    with tempfile.TemporaryDirectory(prefix="ct-scale-") as tmp:
        folder = Path(tmp)
        ct, model = prepare(folder, args.members, preset)
        ours = _child("ours", args, folder, ct, model)
        monai = _child("monai", args, folder, ct, model) if args.monai else None
        agreement = _agreement(folder) if monai else None
    summary = {
        "preset": args.preset,
        "total_s": round(ours["total_s"], 2),
        "peak_rss_mib": round(ours["peak_rss_mib"], 1),
        "guard_predicted_mib": round(ours["guard_predicted_mib"], 1),
        "guard_added_over_measured": round(ours["guard_added_mib"] / ours["measured_added_mib"], 2),
        "stages": {k: round(v, 3) for k, v in ours["stages"].items()},
        "voxels": ours["voxels"],
        "members": args.members,
        "process_s": round(ours["process_s"], 2),
        "threads": args.threads, "patch": preset["patch"], "widths": preset["widths"], "overlap": args.overlap,
        "window": args.window, "bundle_files": ours["bundle_files"],
        "bf16_both": args.bf16, "crop": args.crop, "compile": args.compile,
        "working_spacing_mm": preset["working"],
    }
    if monai:
        summary.update({
            "monai_total_s": round(monai["total_s"], 2),
            "ratio": round(ours["total_s"] / monai["total_s"], 3),
            "monai_peak_rss_mib": round(monai["peak_rss_mib"], 1),
            "monai_stages": {k: round(v, 3) for k, v in monai["stages"].items()},
            "monai_process_s": round(monai["process_s"], 2),
            "label_agreement_with_monai": agreement,
        })
    print(json.dumps(summary))


def _agreement(folder: Path) -> float | None:
    """Fraction of voxels where both pipelines wrote the same label (same grid, read back)."""
    import numpy as np

    from deconvseg.pipeline.io.volumes import read_volume

    ours = read_volume(folder / "out-ours" / "ct" / "labels.nii.gz", kind="label")
    found = sorted((folder / "out-monai").glob("*seg.nii.gz"))
    if not found:
        return None
    theirs = read_volume(found[0], kind="label")
    if not ours.same_grid(theirs, atol=1e-3):
        return None
    values = np.array([0, 1, 2, 3, 4], dtype=np.uint8)  # MONAI writes channel indices
    return round(float((ours.array == values[theirs.array.astype(np.intp)]).mean()), 4)


if __name__ == "__main__":
    main()
