"""Prefect flow: deblur every PNG/TIFF image of a folder (one task per image, each wrapping ``deblur_file``).

Tasks pass paths and the config as a plain dict, never arrays. A failing image is reported by name with
its one-line reason while the others finish; the flow then fails with a count. Run it in-process
(``deblur_folder``) or as ``python -m deconvseg.flows.deblur '{"src": ..., "dst": ..., "config": {...}}'``, which is
how ``deconvseg deblur FOLDER OUT`` runs it (in a child with the offline environment of
``deconvseg.flows.prefect_env``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from prefect import flow, task

from deconvseg.pipeline.deblur.image2d import IMAGE_SUFFIXES
from deconvseg.pipeline.deblur.stage import DeblurConfig, deblur_file
from deconvseg.pipeline.errors import InputError


@task(name="deblur-image")
def deblur_image_task(src: str, dst: str, config: dict[str, Any]) -> str:
    """Deblur one image file (wraps ``deconvseg.pipeline.deblur.stage.deblur_file``)."""
    return str(deblur_file(src, dst, DeblurConfig(**config)))


@flow(name="deblur-folder")
def deblur_folder_flow(src: str, dst: str, config: dict[str, Any]) -> list[str]:
    """Deblur each ``src/*.png|tif|tiff`` into ``dst`` under the same name; the written paths, sorted."""
    images = sorted(p for p in Path(src).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    Path(dst).mkdir(parents=True, exist_ok=True)
    futures = {p.name: deblur_image_task.submit(str(p), str(Path(dst) / p.name), config) for p in images}
    for future in futures.values():
        future.wait()
    failed = {name: f.state.message for name, f in futures.items() if f.state.is_failed()}
    if failed:
        reasons = "; ".join(f"{name}: {message}" for name, message in failed.items())
        raise RuntimeError(f"{len(failed)} of {len(images)} images failed: {reasons}")
    return sorted(f.result() for f in futures.values())


def deblur_folder(src: str | Path, dst: str | Path, config: DeblurConfig = DeblurConfig()) -> list[str]:
    """Check the folder, then run ``deblur_folder_flow`` in this process.

    Raises:
        InputError: ``src`` is not a folder holding PNG/TIFF images.
    """
    src = Path(src)
    if not src.is_dir() or not any(p.suffix.lower() in IMAGE_SUFFIXES for p in src.iterdir()):
        raise InputError(src, "not a folder of PNG/TIFF images", "pass a folder with .png/.tif files or one file")
    return deblur_folder_flow(str(src.resolve()), str(Path(dst).resolve()), config.model_dump())


if __name__ == "__main__":
    request = json.loads(sys.argv[1])
    written = deblur_folder(request["src"], request["dst"], DeblurConfig(**request["config"]))
    print(json.dumps({"written": written}))
