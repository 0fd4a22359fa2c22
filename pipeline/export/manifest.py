"""``manifest.json``: what went in (hashes), what made the result (model, config, versions), how long.

Hashes are SHA-256 of the input files (a DICOM folder: of each file, in z order), so a reviewer
can tell whether two bundles came from the same bytes.
"""

from __future__ import annotations

import datetime as dt
import json
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

from deconvseg.pipeline.files import atomic_file, file_digest

PACKAGES = (
    "deconvseg",
    "numpy",
    "SimpleITK",
    "pydicom",
    "highdicom",
    "pynrrd",
    "scikit-image",
    "scipy",
    "torch",
    "monai",
    "prefect",
)


def software_versions(packages: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
    """Installed versions of ``packages`` (``None`` where absent) and of Python."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in packages:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def input_hashes(paths: dict[str, list[str | Path]]) -> dict[str, list[dict[str, str]]]:
    """``{role: [{"path", "sha256"}, ...]}`` for every input file."""
    return {role: [{"path": str(p), "sha256": file_digest(p)} for p in files] for role, files in paths.items()}


def build_manifest(
    inputs: dict[str, list[str | Path]],
    *,
    model: dict[str, Any] | None = None,
    config: dict[str, Any] | None = None,
    timings: dict[str, float] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The manifest as a JSON-able dict.

    Args:
        inputs: role (``image``, ``labels``, ...) -> files read.
        model: model identity (name, version, checkpoint hash, metrics), when a model made the labels.
        config: the effective configuration.
        timings: stage -> seconds.
        extra: further sections (e.g. ``dicom_reference``), merged at the top level.
    """
    return {
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "inputs": input_hashes(inputs),
        "model": model,
        "config": config,
        "timings_s": {k: round(v, 3) for k, v in (timings or {}).items()},
        "software": software_versions(),
        "platform": platform.platform(),
        **(extra or {}),
    }


def write_manifest(path: str | Path, manifest: dict[str, Any]) -> Path:
    """Write ``manifest.json`` atomically."""
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(manifest, indent=2, default=str))
    return Path(path)
