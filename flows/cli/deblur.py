"""``deconvseg deblur IN OUT``: restore a blurred 2D image, a volume (slice-wise) or a folder of images.

``deconvseg deblur-train CONFIG``: train the Xu et al. DCNN for one degradation and save its weights.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import typer

from deconvseg.flows.cli.app import app, one_line_errors


def _run_folder_flow(src: Path, dst: Path, config: dict) -> int:
    """Run ``deconvseg.flows.deblur`` on a folder in a child process with the offline Prefect environment."""
    from deconvseg.flows.prefect_env import prefect_environment

    request = {"src": str(src.resolve()), "dst": str(dst.resolve()), "config": config}
    command = [sys.executable, "-m", "deconvseg.flows.deblur", json.dumps(request)]
    return subprocess.run(command, env=prefect_environment()).returncode


@app.command()
@one_line_errors
def deblur(
    src: Path = typer.Argument(..., help="PNG/TIFF image, NIfTI/NRRD/MHA volume, DICOM folder or PNG/TIFF folder."),
    dst: Path = typer.Argument(..., help="Output: .png/.tif for images, .nii.gz/.nrrd/.mha for volumes, or a folder."),
    psf: str | None = typer.Option(None, help="PSF in pixels: disk:R, gaussian:SIGMA, motion:LEN[:ANGLE], .npy."),
    method: str | None = typer.Option(None, help="wiener|svd|direct2d|rl|skimage_wiener|unsupervised_wiener|dcnn"),
    nsr: float | None = typer.Option(None, help="Wiener noise-to-signal ratio 1/SNR (wiener, svd, direct2d)."),
    config: Path | None = typer.Option(None, help="YAML overriding the defaults (see configs/deblur.yaml)."),
) -> None:
    """Deblur with a known PSF. Images keep their size; volumes keep their geometry (slice-wise).

    A folder of PNG/TIFF images runs the Prefect flow ``deconvseg.flows.deblur`` (one task per image).
    """
    import torch

    from deconvseg.pipeline.config import load_config, validate_config
    from deconvseg.pipeline.deblur.image2d import IMAGE_SUFFIXES
    from deconvseg.pipeline.deblur.stage import DeblurConfig, deblur_file

    overrides = {k: v for k, v in {"psf": psf, "method": method, "nsr": nsr}.items() if v is not None}
    if config:
        cfg = load_config(config, DeblurConfig, overrides)
    else:
        cfg = validate_config(overrides, DeblurConfig, "options")
    torch.set_num_threads(cfg.threads)
    if src.is_dir() and any(p.suffix.lower() in IMAGE_SUFFIXES for p in src.iterdir()):
        raise typer.Exit(code=_run_folder_flow(src, dst, cfg.model_dump()))
    deblur_file(src, dst, cfg)
    typer.echo(f"wrote {dst} ({cfg.method}, {cfg.psf})")


@app.command("deblur-train")
@one_line_errors
def deblur_train(config: Path = typer.Argument(..., help="Training YAML, e.g. configs/deblur-train-xu.yaml.")) -> None:
    """Train the Xu et al. deblurring CNN on scikit-image's bundled images (held-out set never seen)."""
    import logging

    import torch

    from deconvseg.pipeline.checkpoints import save_checkpoint
    from deconvseg.pipeline.config import load_config
    from deconvseg.pipeline.deblur.train import DeblurTrainConfig, train_deblur_cnn

    def save(net: Any, info: dict[str, Any]) -> Path:
        return save_checkpoint(cfg.out, net, {"arch": "deblur_cnn", "arch_kwargs": net.config, **info})

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    cfg = load_config(config, DeblurTrainConfig)
    torch.set_num_threads(cfg.threads)
    model, meta = train_deblur_cnn(cfg, checkpoint=save)
    folder = save(model, meta)
    typer.echo(f"saved {folder} after {meta['training']['steps']} steps")
