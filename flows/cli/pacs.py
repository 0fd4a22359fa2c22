"""``deconvseg pacs``: segment new series of a DICOMweb PACS and store SEG and RTSTRUCT back.

Inputs, credentials and the PACS's answer are checked here first (one-line errors, no Prefect
start-up); then the ``pacs-pass`` flow runs in a child process, as ``deconvseg batch`` does.
"""

from __future__ import annotations

import os
from pathlib import Path

import typer

from deconvseg.flows.cli.app import app, one_line_errors

_HOME_HELP = "Prefect home (run history, results); default: $PREFECT_HOME or ~/.prefect."


def _check(request: dict) -> None:
    """Fail fast: the query, the model, the credentials and one QIDO-RS request must be good."""
    from deconvseg.flows.inputs import DEFAULT_MODEL
    from deconvseg.flows.pacs_settings import PacsAuth, PacsConfig
    from deconvseg.pipeline.config import validate_config
    from deconvseg.pipeline.ensemble import model_version
    from deconvseg.pipeline.pacs.connection import connect, translated
    from deconvseg.pipeline.pacs.query import SeriesQuery

    search = SeriesQuery(**request["query"])
    model_version(request["model"] or DEFAULT_MODEL)
    settings = validate_config(request["config"], PacsConfig, source="pacs config")
    client = connect(
        request["url"],
        PacsAuth(**request["auth"]).credentials(),
        verify_tls=request["verify_tls"],
        timeout_s=settings.http_timeout_s,
    )
    with translated(client.base_url, "QIDO-RS series query"):
        client.search_for_series(search_filters=search.filters(), limit=1)


@app.command()
@one_line_errors
def pacs(
    url: str = typer.Option(..., "--url", help="DICOMweb root, e.g. http://127.0.0.1:8042/dicom-web (Orthanc)."),
    out: Path = typer.Option(..., "--out", help="Output folder: one review bundle per series, batch.json."),
    model: Path = typer.Option(None, "--model", help="Checkpoint or ensemble folder (default: bundled phantom-ct)."),
    modality: str = typer.Option(None, "--modality", help="Only series of this modality (CT, MR, ...)."),
    since: str = typer.Option(
        None,
        "--since",
        help="First study date YYYYMMDD (default: the day of the last successful pass over this source, else all).",
    ),
    until: str = typer.Option(None, "--until", help="Last study date YYYYMMDD."),
    series_description: str = typer.Option(
        None, "--series-description", help="Regular expression searched in the series description."
    ),
    limit: int = typer.Option(None, "--limit", min=1, help="At most N series per pass."),
    user: str = typer.Option(None, "--user", help="HTTP basic user name."),
    password_env: str = typer.Option(None, "--password-env", help="Environment variable holding the password."),
    token_env: str = typer.Option(None, "--token-env", help="Environment variable holding a bearer token."),
    secret_block: str = typer.Option(
        None, "--secret-block", help="Prefect Secret block holding the password (with --user) or the token."
    ),
    ca_bundle: Path = typer.Option(None, "--ca-bundle", help="CA certificate(s) to verify the PACS's TLS with."),
    insecure: bool = typer.Option(False, "--insecure", help="Do not verify TLS certificates (test servers only)."),
    viewer_url: str = typer.Option(
        None,
        "--viewer-url",
        help="OHIF base beside the PACS (deconvseg viewer, "
        "docs/review.md): each case's viewer_url opens its study with our SEG shown; a "
        "value with {study}, {series} or {orthanc_study} is a study-page pattern instead "
        "(default: Orthanc Explorer).",
    ),
    deidentify: bool = typer.Option(
        False, "--deidentify", help="Pseudonymous, de-identified bundles; nothing is stored in the PACS."
    ),
    config: Path = typer.Option(None, "--config", help="YAML overriding PacsConfig (BatchConfig + http_timeout_s)."),
    cron: str = typer.Option(None, "--cron", help='Serve on a schedule, e.g. "*/15 * * * *" (needs a server).'),
    once: bool = typer.Option(False, "--once", help="Run one pass now and exit (the default without --cron)."),
    name: str = typer.Option("pacs", "--name", help="Deployment name when serving with --cron."),
    api_url: str = typer.Option(None, "--api-url", help="Prefect server API, e.g. http://127.0.0.1:4200/api."),
    prefect_home: Path = typer.Option(None, "--prefect-home", help=_HOME_HELP),
    as_json: bool = typer.Option(False, "--json", help="End with the summary as one JSON line."),
) -> None:
    """Query a PACS (QIDO-RS), segment each new series (WADO-RS in), store SEG + RTSTRUCT (STOW-RS out).

    A series that already holds our SEG for this model version is skipped, so a rerun stores
    nothing new. Exit status 0 when every series succeeded, 1 when one failed, 2 on bad input.
    """
    from deconvseg.flows.pacs_settings import PacsConfig
    from deconvseg.pipeline.config import load_config
    from deconvseg.pipeline.errors import ConfigError

    if sum(bool(v) for v in (password_env, token_env, secret_block)) > 1:
        raise ConfigError("--password-env, --token-env, --secret-block: give one")
    if password_env and not user:
        raise ConfigError("--password-env needs --user")
    if insecure and ca_bundle:
        raise ConfigError("--insecure and --ca-bundle: give one")
    settings = load_config(config, PacsConfig) if config else PacsConfig()
    server = api_url or os.environ.get("PREFECT_API_URL") or None
    if cron and not once and not server:
        raise ConfigError(
            "--cron needs a running Prefect server: start 'prefect server start --host 127.0.0.1' "
            "and pass --api-url http://127.0.0.1:4200/api"
        )
    query = {
        k: v
        for k, v in {
            "modality": modality,
            "since": since,
            "until": until,
            "description": series_description,
            "limit": limit,
        }.items()
        if v is not None
    }
    auth = {
        k: v
        for k, v in {
            "user": user,
            "password_env": password_env,
            "token_env": token_env,
            "secret_block": secret_block,
        }.items()
        if v is not None
    }
    verify: bool | str = False if insecure else str(ca_bundle.resolve()) if ca_bundle else True
    request = {
        "url": url,
        "out": str(out.resolve()),
        "model": str(model.resolve()) if model else None,
        "query": query,
        "auth": auth,
        "config": settings.model_dump(),
        "verify_tls": verify,
        "viewer_url": viewer_url,
        "deidentify": deidentify,
        "cron": None if once else cron,
        "name": name,
        "print_json": as_json,
    }
    if not secret_block:  # a Secret block is read inside Prefect, by the flow
        _check(request)
    raise typer.Exit(_run_child(request, prefect_home, server))


def _run_child(request: dict, home: Path | None, api_url: str | None) -> int:
    """Run ``python -m deconvseg.flows.pacs`` with ``request`` in an offline child process; its exit status
    (``deconvseg.flows.runners.run_flow_child``: the request on stdin, the child ends with this process).

    The child inherits this environment (the variable named by ``--password-env`` included);
    the request names the variable, never its value.
    """
    from deconvseg.flows.cli.app import release_stderr
    from deconvseg.flows.runners import run_flow_child

    release_stderr()  # the refusals are over: the child's lines stream as they come
    return run_flow_child("deconvseg.flows.pacs", request, home, api_url, local_cluster=False)
