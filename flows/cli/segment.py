"""``deconvseg segment INPUT... --out DIR --model M``: one review bundle per input, in this process."""

from __future__ import annotations

import json
import time
from pathlib import Path

import typer

from deconvseg.flows.cli.app import app, one_line_errors
from deconvseg.flows.inputs import case_id_of
from deconvseg.models import WEIGHTS_ROOT as WEIGHTS

def resolve_model(model: str) -> Path:
    """A checkpoint/ensemble folder given as a path or as a name under ``models/weights``.

    Raises:
        InputError: when neither exists.
    """
    from deconvseg.pipeline.errors import InputError

    for candidate in (Path(model), WEIGHTS / model):
        if candidate.is_dir():
            return candidate
    names = sorted(p.name for p in WEIGHTS.iterdir() if p.is_dir()) if WEIGHTS.is_dir() else []
    raise InputError(model, "no such model folder", f"pass a checkpoint/ensemble folder or one of {names}")


@app.command()
@one_line_errors
def segment(
    inputs: list[Path] = typer.Argument(..., help="NIfTI/NRRD/MHA files or DICOM series folders."),
    out: Path = typer.Option(..., "--out", help="Output folder; each input gets OUT/<case-id>/ (a review bundle)."),
    model: str = typer.Option("phantom-ct", "--model", help="Checkpoint or ensemble folder, or a name under models/weights."),
    config: Path = typer.Option(None, "--config", help="YAML overriding InferenceConfig (threads, bf16, fusion, ...)."),
    threads: int = typer.Option(None, "--threads", min=1, help="Torch threads (overrides the config)."),
    fusion: str = typer.Option(None, "--fusion", help="mean, weighted_mean, majority or staple (default: the model's)."),
    as_json: bool = typer.Option(False, "--json", help="End with one JSON line summarising every case."),
    timeout: float = typer.Option(None, "--timeout", min=0.001,
                                  help="Fail a case whose reading and inference take longer (seconds)."),
) -> None:
    """Segment each INPUT with the model's ensemble; write labels, uncertainty, DICOM-SEG/RTSTRUCT, report."""
    from rich.progress import track

    from deconvseg.models.registry import load_ensemble
    from deconvseg.pipeline.config import load_config, validate_config
    from deconvseg.pipeline.errors import InputError
    from deconvseg.pipeline.export.bundle import write_bundle
    from deconvseg.pipeline.io.volumes import read_volume
    from deconvseg.pipeline.guards import time_limit
    from deconvseg.pipeline.normalize import with_modality
    from deconvseg.pipeline.segment import InferenceConfig, segment_case

    overrides = {k: v for k, v in {"threads": threads, "fusion": fusion}.items() if v is not None}
    settings = (load_config(config, InferenceConfig, overrides) if config
                else validate_config(overrides, InferenceConfig, "command line"))
    cases = {}
    for path in inputs:
        if not path.exists():
            raise InputError(path, "no such file or folder", "check the path")
        name = case_id_of(path)
        if name in cases:
            raise InputError(path, f"gives the same case id {name!r} as {cases[name]}", "rename one of them")
        cases[name] = path
    model_dir = resolve_model(model)
    members = load_ensemble(model_dir)
    summaries = []
    for name, path in track(list(cases.items()), description="segmenting", transient=True):
        start = time.perf_counter()
        with time_limit(timeout, str(path)):
            image = with_modality(read_volume(path))
            result = segment_case(image, members, settings)
        manifest = {"case_id": name, "timings_s": result.timings,
                    "model": {"dir": str(model_dir), "members": [Path(m.get("checkpoint_dir", "")).name for _, m in members]},
                    "config": {"inference": settings.model_dump(mode="json")},
                    "structure_uncertainty": {str(k): v for k, v in result.structure_uncertainty.items()}}
        bundle = write_bundle(out / name, image, result.labels, result.table, uncertainty=result.uncertainty,
                              manifest=manifest, shape=result.shape)
        seconds = time.perf_counter() - start
        summaries.append({"case_id": name, "bundle": str(bundle.path), "seconds": round(seconds, 2),
                          "structures": len(bundle.stats), "flags": len(bundle.flags)})
        typer.echo(f"{name}: {len(bundle.stats)} structures, {seconds:.1f} s -> {bundle.path}", err=as_json)
    if as_json:
        typer.echo(json.dumps({"cases": summaries}))
