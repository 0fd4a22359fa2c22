"""Helpers of the flow tests: a tiny random-initialised model and tiny phantom inputs on disk."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TINY_SHAPE, TINY_SPACING = (12, 24, 24), (10.0, 10.0, 16.0)


def write_tiny_model(folder: Path, members: int = 2) -> Path:
    """An ensemble folder of ``members`` tiny DeconvNets (random weights, seeded) for phantom labels."""
    import torch

    from deconvseg.models.registry import build_model
    from deconvseg.pipeline.checkpoints import save_checkpoint
    from deconvseg.pipeline.phantoms import PHANTOM_LABELS

    meta = {"labels": PHANTOM_LABELS.to_json(), "spacing": list(TINY_SPACING), "patch_size": list(TINY_SHAPE),
            "normalization": {"scheme": "ct", "clip": [-200.0, 300.0], "mean": 40.0, "std": 100.0},
            "metrics": {}, "training": {"data": "none (random weights, tests only)"}}
    for index in range(members):
        torch.manual_seed(index)
        model = build_model("deconvnet3d", in_channels=1, out_channels=len(PHANTOM_LABELS) + 1, widths=[4, 8])
        save_checkpoint(folder / f"member{index}", model, meta)
    return folder


def write_phantom(path: Path, seed: int) -> Path:
    """A tiny phantom CT written to ``path`` (NIfTI)."""
    from deconvseg.pipeline.io.volumes import write_volume
    from deconvseg.pipeline.phantoms import make_phantom

    image, _ = make_phantom("CT", shape=TINY_SHAPE, spacing=TINY_SPACING, seed=seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_volume(image, path)


def write_inputs(folder: Path, seeds: list[int], corrupt: str | None = None) -> Path:
    """Phantoms ``p<seed>.nii.gz``; the file named ``corrupt`` is truncated to 100 bytes."""
    for seed in seeds:
        write_phantom(folder / f"p{seed}.nii.gz", seed)
    if corrupt:
        bad = folder / corrupt
        bad.write_bytes(bad.read_bytes()[:100])
    return folder


def run(args: list[str], env: dict[str, str], timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    """Run a command of this checkout (``python -m ...`` or ``-c``) with ``env``; output captured."""
    full = {**os.environ, **env, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, *args], env=full, cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, **kwargs)
