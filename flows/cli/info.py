"""``deconvseg info PATH``: geometry, modality and kind of any readable input."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, cast

import typer

from deconvseg.flows.cli.app import app, one_line_errors


@app.command()
@one_line_errors
def info(
    path: Path = typer.Argument(..., help="A NIfTI/NRRD/MHA/MHD file, a DICOM series folder or one of its files."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    kind: str = typer.Option("image", "--kind", help="Read as 'image' or 'label'."),
    series_uid: str = typer.Option(None, "--series-uid", help="DICOM series to read when a folder holds several."),
    channel: int = typer.Option(None, "--channel", help="Channel of a 4D or multi-component image."),
    max_voxels: int = typer.Option(None, "--max-voxels", help="Refuse larger volumes (default 1e9)."),
) -> None:
    """Print size, spacing, origin, direction (x, y, z order, LPS), modality and kind.

    ``modality`` comes from the DICOM tag when there is one, else (images only) from intensity
    statistics; ``modality_source`` says which.
    """
    from deconvseg.pipeline.errors import InputError
    from deconvseg.pipeline.io.checks import DEFAULT_MAX_VOXELS
    from deconvseg.pipeline.io.volumes import read_volume
    from deconvseg.pipeline.normalize import detect_modality
    from deconvseg.pipeline.sanitize import terminal_text
    from deconvseg.pipeline.volume import Kind

    if kind not in ("image", "label"):
        raise InputError(path, f"unknown kind '{kind}'", "use --kind image or --kind label")
    volume = read_volume(
        path, cast(Kind, kind), series_uid=series_uid, channel=channel, max_voxels=max_voxels or DEFAULT_MAX_VOXELS
    )
    modality = volume.modality or (detect_modality(volume) if volume.kind == "image" else None)
    summary: dict[str, Any] = {
        "path": str(path),
        "size": list(volume.size),
        "spacing": list(volume.spacing),
        "origin": list(volume.origin),
        "direction": [float(v) for v in volume.direction.ravel()],
        "modality": modality,
        "modality_source": "tag" if volume.modality else ("statistics" if modality else None),
        "kind": volume.kind,
        "dtype": str(volume.array.dtype),
    }
    if "series_instance_uid" in volume.metadata:
        summary["series_instance_uid"] = volume.metadata["series_instance_uid"]
        summary["files"] = len(volume.metadata["dicom_files"])
    if as_json:
        typer.echo(json.dumps(summary))
    else:
        for key, value in summary.items():
            typer.echo(f"{key:>16}: {terminal_text(str(value))}")  # a path or UID from the input: no escapes
