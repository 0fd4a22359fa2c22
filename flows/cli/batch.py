"""``deconvseg batch`` (a folder or manifest through the Prefect batch flow) and ``deconvseg demo``.

Both check their inputs here (one-line errors, no Prefect start-up), then run the flow in a child
process (``python -m deconvseg.flows.serve``) whose environment is offline and quiet (``deconvseg.flows.prefect_env``).
"""

from __future__ import annotations

import os
from pathlib import Path

import typer

from deconvseg.flows.cli.app import app, one_line_errors, release_stderr

_HOME_HELP = "Prefect home (run history, results); default: $PREFECT_HOME or ~/.prefect."
_DEMO_SHAPE, _DEMO_SPACING = (64, 128, 128), (2.0, 2.0, 3.0)  # the default model's training grid


def _run_child(request: dict, home: Path | None, api_url: str | None, local_cluster: bool) -> int:
    """Run ``deconvseg.flows.serve`` with ``request`` in an offline child process; its exit status
    (``deconvseg.flows.runners.run_flow_child``: the request on stdin, the child ends with this process)."""
    from deconvseg.flows.runners import run_flow_child

    release_stderr()  # the refusals are over: the child's lines (failed cases, Prefect) stream as they come
    return run_flow_child("deconvseg.flows.serve", request, home, api_url, local_cluster)


def _check(source: Path, out: Path, model: str | None) -> Path:
    """Fail fast, before Prefect starts: the inputs must exist, every bundle folder must be writable
    (``deconvseg.pipeline.outputs``), the model must load and validate, and no other batch may be
    writing into ``out``; the model folder."""
    from deconvseg.flows.inputs import DEFAULT_MODEL, discover_cases
    from deconvseg.flows.outputs import batch_lock
    from deconvseg.pipeline.ensemble import load_ensemble
    from deconvseg.pipeline.model_paths import resolve_model
    from deconvseg.pipeline.outputs import check_bundle_target, check_output_root

    check_output_root(out)
    for case in discover_cases(source):
        check_bundle_target(out / case.case_id)
    folder = resolve_model(model) if model else DEFAULT_MODEL
    load_ensemble(folder)
    with batch_lock(out.expanduser().absolute()):  # a second batch on the same output: refused here, in one line
        pass
    return folder.expanduser().resolve()


@app.command()
@one_line_errors
def batch(
    source: Path = typer.Argument(
        ..., help="Folder of NIfTI/NRRD/MHA files and DICOM series folders, or a manifest CSV."
    ),
    out: Path = typer.Option(..., "--out", help="Output folder: one review bundle per case, batch.json."),
    model: str | None = typer.Option(
        None,
        "--model",
        help="A shipped model's name or a checkpoint/ensemble folder given "
        "as a path (default: the shipped phantom-ct).",
    ),
    config: Path = typer.Option(None, "--config", help="YAML overriding BatchConfig (see configs/batch.yaml)."),
    cron: str = typer.Option(None, "--cron", help='Serve on a schedule, e.g. "0 2 * * *" (needs a server).'),
    name: str = typer.Option("nightly", "--name", help="Deployment name when serving with --cron."),
    dask: str = typer.Option(None, "--dask", help="Run cases on an existing Dask scheduler (tcp://host:8786)."),
    workers: int = typer.Option(None, "--workers", min=1, help="Run cases on a local Dask cluster of N workers."),
    api_url: str = typer.Option(
        None,
        "--api-url",
        help="Prefect server API, e.g. http://127.0.0.1:4200/api "
        "(default: $PREFECT_API_URL, else the embedded server).",
    ),
    prefect_home: Path = typer.Option(None, "--prefect-home", help=_HOME_HELP),
    as_json: bool = typer.Option(False, "--json", help="End with the summary as one JSON line."),
    report_base_url: str = typer.Option(
        None,
        "--report-base-url",
        help="Where OUT is served over HTTP (e.g. python -m http.server -d OUT), so the dashboard's report links open.",
    ),
    allow_domain_mismatch: bool = typer.Option(
        False,
        "--allow-domain-mismatch",
        help="Segment inputs the model was not made for (other modality or channels), flagged, "
        "instead of failing them.",
    ),
    channel: int = typer.Option(
        None, "--channel", min=0, help="Which channel of 4D/multi-component inputs to segment (overrides the config)."
    ),
    deidentify: bool = typer.Option(
        None,
        "--deidentify/--identified",
        help="SEG/RTSTRUCT without patient name, "
        "ID, birth date; manifest without input paths (default: the config's, off).",
    ),
) -> None:
    """Segment every case of SOURCE through the Prefect batch flow (cached, retried, isolated).

    Exit status 0 when every case finished, 1 when a case failed (see OUT/batch.json), 2 on bad input.
    """
    from deconvseg.flows.inputs import BatchConfig
    from deconvseg.pipeline.config import load_config, validate_config
    from deconvseg.pipeline.errors import ConfigError

    if dask and workers:
        raise ConfigError("--dask and --workers: give one (an existing scheduler or a local cluster)")
    overrides = {k: v for k, v in {"channel": channel, "deidentify": deidentify}.items() if v is not None}
    settings = (
        load_config(config, BatchConfig, overrides)
        if config
        else validate_config(overrides, BatchConfig, "command line")
    )
    model_dir = _check(source, out, model)
    server = api_url or os.environ.get("PREFECT_API_URL") or None
    if cron and not server:
        raise ConfigError(
            "--cron needs a running Prefect server: start 'prefect server start --host 127.0.0.1' "
            "and pass --api-url http://127.0.0.1:4200/api"
        )
    if report_base_url:
        settings = settings.model_copy(update={"report_base_url": report_base_url})
    if allow_domain_mismatch:
        settings = settings.model_copy(update={"allow_domain_mismatch": True})
    if workers and config is None:
        settings = settings.model_copy(update={"threads": max(1, (os.cpu_count() or 1) // workers)})
    request = {
        "source": str(source.resolve()),
        "out": str(out.resolve()),
        "model": str(model_dir),
        "config": settings.model_dump(),
        "dask_address": dask,
        "dask_workers": workers,
        "cron": cron,
        "name": name,
        "print_json": as_json,
    }
    raise typer.Exit(_run_child(request, prefect_home, server, local_cluster=bool(workers)))


@app.command()
@one_line_errors
def demo(
    out: Path = typer.Option(Path("deconvseg-demo"), "--out", help="Output folder (bundles; inputs in OUT/inputs)."),
    cases: int = typer.Option(3, "--cases", min=1, max=20, help="Number of phantom CT volumes (one as DICOM)."),
    model: str | None = typer.Option(
        None,
        "--model",
        help="A shipped model's name or a checkpoint/ensemble folder given "
        "as a path (default: the shipped phantom-ct).",
    ),
    prefect_home: Path = typer.Option(None, "--prefect-home", help=_HOME_HELP),
) -> None:
    """Generate phantom CTs, segment them with the bundled model on the embedded Prefect server,
    write review bundles and dashboard artifacts, and print where to look."""
    from deconvseg.flows import dashboard
    from deconvseg.flows.demo import write_demo_inputs
    from deconvseg.flows.inputs import BatchConfig

    inputs = write_demo_inputs(out / "inputs", cases, _DEMO_SHAPE, _DEMO_SPACING)
    model_dir = _check(inputs, out, model)
    settings = BatchConfig(dashboard_key="deconvseg-demo")
    request = {
        "source": str(inputs.resolve()),
        "out": str(out.resolve()),
        "model": str(model_dir),
        "config": settings.model_dump(),
    }
    api_url = os.environ.get("PREFECT_API_URL") or None
    status = _run_child(request, prefect_home, api_url, local_cluster=False)
    if status != 0:
        raise typer.Exit(status)
    home = f"PREFECT_HOME={prefect_home.resolve()} " if prefect_home else ""
    reports = sorted(p for p in out.resolve().glob("*/report.html"))
    typer.echo("\nReview bundles (open report.html in a browser):")
    for report in reports:
        typer.echo(f"  {report}")
    typer.echo(f"Run summary: {out.resolve() / 'batch.json'}")
    ui = dashboard.ui_address(api_url)
    keys = "keys deconvseg-demo-cases, deconvseg-demo-summary"
    if api_url:
        typer.echo(f"Dashboards: open {ui}/artifacts ({keys})")
    else:
        typer.echo(
            f"Dashboards: {home}prefect server start --host 127.0.0.1, then open {ui}/artifacts ({keys}); "
            f"on another port P: {home}PREFECT_UI_API_URL=http://127.0.0.1:P/api prefect server start "
            "--host 127.0.0.1 --port P, then open http://127.0.0.1:P/artifacts"
        )
