"""``deconvseg info PATH``: geometry and kind of any readable input."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from flows.cli.app import app, one_line_errors


@app.command()
@one_line_errors
def info(
    path: Path = typer.Argument(..., help="A NIfTI/NRRD/MHA file or a DICOM series folder."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Print size, spacing, origin, direction (x, y, z order, LPS), modality and kind."""
    from pipeline.io import read_volume

    volume = read_volume(path)
    summary = {
        "path": str(path),
        "size": list(volume.size),
        "spacing": list(volume.spacing),
        "origin": list(volume.origin),
        "direction": [float(v) for v in volume.direction.ravel()],
        "modality": volume.modality,
        "kind": volume.kind,
        "dtype": str(volume.array.dtype),
    }
    if as_json:
        typer.echo(json.dumps(summary))
    else:
        for key, value in summary.items():
            typer.echo(f"{key:>10}: {value}")
