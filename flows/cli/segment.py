"""``deconvseg segment INPUT... --out DIR --model M``: one review bundle per input, in this process."""

from __future__ import annotations

import functools
import json
import sys
from contextlib import ExitStack
from pathlib import Path

import typer

from deconvseg.flows.cli.app import app, one_line_errors, terminal
from deconvseg.flows.inputs import case_id_of


@app.command()
@one_line_errors
def segment(
    inputs: list[Path] = typer.Argument(..., help="NIfTI/NRRD/MHA files or DICOM series folders."),
    out: Path = typer.Option(..., "--out", help="Output folder; each input gets OUT/<case-id>/ (a review bundle)."),
    model: str = typer.Option(
        "phantom-ct",
        "--model",
        help="A shipped model's name (acdc, phantom-ct, ...) or a "
        "checkpoint/ensemble folder given as a path (./mine, /models/mine).",
    ),
    config: Path = typer.Option(None, "--config", help="YAML overriding InferenceConfig (threads, bf16, fusion, ...)."),
    threads: int = typer.Option(None, "--threads", min=1, help="Torch threads (overrides the config)."),
    device: str = typer.Option(None, "--device", help="auto | cpu | cuda[:N] | mps (overrides the config)."),
    fusion: str = typer.Option(
        None, "--fusion", help="mean, weighted_mean, majority or staple (default: the model's)."
    ),
    as_json: bool = typer.Option(False, "--json", help="End with one JSON line summarising every case."),
    timeout: float = typer.Option(
        None, "--timeout", min=0.001, help="Fail a case whose reading and inference take longer (seconds)."
    ),
    allow_domain_mismatch: bool = typer.Option(
        False,
        "--allow-domain-mismatch",
        help="Segment an input the model was not made for (other modality or channels) and flag it, "
        "instead of refusing it.",
    ),
    channel: int = typer.Option(
        None, "--channel", min=0, help="Which channel of a 4D/multi-component input to segment."
    ),
    deidentify: bool = typer.Option(
        False,
        "--deidentify",
        help="SEG/RTSTRUCT without patient name, ID, birth "
        "date (PatientID = case id); manifest without input paths (as export's).",
    ),
) -> None:
    """Segment each INPUT with the model's ensemble; write labels, uncertainty, DICOM-SEG/RTSTRUCT, report."""
    import torch

    from deconvseg.flows.progress import case_bars, stage_lines
    from deconvseg.pipeline.case import CaseConfig, CaseInput, run_case
    from deconvseg.pipeline.config import load_config, validate_config
    from deconvseg.pipeline.devices import resolve_device
    from deconvseg.pipeline.ensemble import load_ensemble
    from deconvseg.pipeline.errors import InputError
    from deconvseg.pipeline.model_paths import resolve_model
    from deconvseg.pipeline.outputs import check_bundle_target, check_output_root
    from deconvseg.pipeline.segment import InferenceConfig

    overrides = {k: v for k, v in {"threads": threads, "fusion": fusion, "device": device}.items() if v is not None}
    settings = (
        load_config(config, InferenceConfig, overrides)
        if config
        else validate_config(overrides, InferenceConfig, "command line")
    )
    resolve_device(settings.device, "--device" if device else "device")  # one line naming the devices that exist
    check_output_root(out)
    cases: dict[str, CaseInput] = {}
    for path in inputs:
        if not path.exists():
            raise InputError(path, "no such file or folder", "check the path")
        case = CaseInput(case_id_of(path), path)
        if case.case_id in cases:
            raise InputError(
                path, f"gives the same case id {case.case_id!r} as {cases[case.case_id].path}", "rename one of them"
            )
        cases[case.case_id] = case
        check_bundle_target(out / case.case_id)  # every target before the first case is written
    ensemble = load_ensemble(resolve_model(model))
    torch.set_num_threads(settings.threads)
    case_config = CaseConfig(
        inference=settings,
        timeout_s=timeout,
        allow_domain_mismatch=allow_domain_mismatch,
        deidentify=deidentify,
        channel=channel,
    )
    summaries = []
    screen = terminal()
    # A terminal gets bars (cases, and each member's windows); a pipe a line per stage and member (on
    # stdout beside the case lines; with --json on stderr, which shows it when the command ends).
    lines = functools.partial(typer.echo, err=as_json)
    with ExitStack() as stack:
        bars = stack.enter_context(case_bars(screen, len(cases))) if screen else None
        for case in cases.values():
            progress = bars.for_case(case.case_id) if bars else stage_lines(case.case_id, lines)
            summary = run_case(case, ensemble, case_config, out, progress=progress)
            if bars:
                bars.finish_case()
            summaries.append(
                {
                    "case_id": case.case_id,
                    "bundle": str(summary.bundle),
                    "seconds": round(summary.seconds, 2),
                    "structures": len(summary.stats),
                    "non_empty": summary.non_empty,
                    "flags": len(summary.flags),
                    "case_flags": summary.case_flags,
                }
            )
            line = f"{case.case_id}: {summary.line()}, {summary.seconds:.1f} s -> {summary.bundle}"
            if bars and not as_json and sys.stdout.isatty():
                bars.say(line)  # the same terminal: above the bars, not through them
            else:
                typer.echo(line, err=as_json)
    if as_json:
        typer.echo(json.dumps({"cases": summaries}))
