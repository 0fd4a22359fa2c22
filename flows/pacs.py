"""PACS in, PACS out: the ``pacs-pass`` flow and its ``pacs-series`` task.

One pass queries a DICOMweb PACS for image series (QIDO-RS), and for each series, as one case of
the batch machinery: skips it when the PACS already holds our SEG of it for this model version;
retrieves it into ``<out>/.pacs-incoming/<case>/`` (WADO-RS); segments it into the review bundle
``<out>/<case>/`` (reused when the bundle carries the same content-hash cache key); names our
SEG and RTSTRUCT after the model and its version; stores them in ONE STOW-RS request, RTSTRUCT
first and the SEG, the completion mark of the rerun check, last.

Only transient HTTP failures (``PacsError.transient``: connection refused, timeouts, 408/429/5xx)
are retried, with exponential backoff; any other error fails its case at once. Failed cases do
not stop the others. A pass that failed no case records its start day as the source's
"since" (``deconvseg.pipeline.pacs.state``) for the next pass without ``--since``.

Secrets never travel as flow parameters (Prefect stores those): ``auth`` names where the secret
is (an environment variable or a Prefect Secret block) and each task reads it there.

``python -m deconvseg.flows.pacs '<request JSON>'`` is the child process ``deconvseg pacs`` starts.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.futures import as_completed
from prefect.states import Completed, Failed, State
from prefect.tasks import exponential_backoff

from deconvseg.flows import dashboard
from deconvseg.flows.inputs import DEFAULT_MODEL, cache_key, config_version
from deconvseg.flows.outputs import batch_lock, sweep_partial
from deconvseg.flows.pacs_settings import PacsAuth, PacsConfig, PacsRequest
from deconvseg.flows.runners import make_task_runner, read_child_request
from deconvseg.flows.segment import _ensemble, one_line, segment_input
from deconvseg.pipeline.case import CaseInput
from deconvseg.pipeline.config import validate_config
from deconvseg.pipeline.ensemble import model_version
from deconvseg.pipeline.errors import DeconvsegError
from deconvseg.pipeline.files import path_digest, write_json_atomic
from deconvseg.pipeline.pacs.connection import connect, public_url
from deconvseg.pipeline.pacs.errors import PacsError
from deconvseg.pipeline.pacs.naming import case_id, result_description
from deconvseg.pipeline.pacs.query import SeriesInfo, SeriesQuery, find_series
from deconvseg.pipeline.pacs.results import deidentify_files, set_series_description
from deconvseg.pipeline.pacs.state import last_success, record_success, source_key
from deconvseg.pipeline.pacs.transfer import retrieve_series, store_instances, stored_results
from deconvseg.pipeline.sanitize import terminal_text
from deconvseg.pipeline.viewer import check_viewer_base

INCOMING = ".pacs-incoming"


def orthanc_study_id(patient_id: str, study_uid: str) -> str:
    """Orthanc's identifier of a study: SHA-1 of ``PatientID|StudyInstanceUID`` in five dashed groups."""
    digest = hashlib.sha1(f"{patient_id}|{study_uid}".encode()).hexdigest()
    return "-".join(digest[i : i + 8] for i in range(0, 40, 8))


def viewer_link(pattern: str | None, url: str, series: SeriesInfo) -> str:
    """The study's page in the PACS web UI: ``pattern`` with ``{study}``, ``{series}`` and
    ``{orthanc_study}`` filled in; default: Orthanc Explorer beside the DICOMweb root."""
    if pattern is None:
        root = url.rstrip("/").removesuffix("/dicom-web")
        pattern = root + "/app/explorer.html#study?uuid={orthanc_study}"
    return pattern.format(
        study=series.study_uid,
        series=series.series_uid,
        orthanc_study=orthanc_study_id(series.patient_id, series.study_uid),
    )


def _retry_transient(task: Any, task_run: Any, state: State) -> bool:
    """Prefect ``retry_condition_fn``: retry only transient PACS errors."""
    outcome = state.result(raise_on_failure=False)
    return isinstance(outcome, PacsError) and outcome.transient


def _bundle_key(bundle: Path) -> str | None:
    try:
        return json.loads((bundle / "manifest.json").read_text()).get("cache_key")
    except (OSError, ValueError):
        return None


def _viewer_url(bundle: Path) -> str | None:
    """The OHIF link a bundle's manifest carries (cached cases keep the one they were made with)."""
    try:
        return json.loads((bundle / "manifest.json").read_text()).get("viewer_url")
    except (OSError, ValueError):
        return None


@task(name="pacs-series", retry_condition_fn=_retry_transient, task_run_name="pacs-{case}")
def pacs_series(
    series: dict[str, Any],
    case: str,
    url: str,
    auth: dict[str, Any],
    verify_tls: bool | str,
    out_dir: str,
    model_dir: str,
    versions: dict[str, str],
    case_config: dict[str, Any],
    settings: dict[str, Any],
    description: str,
    link: str,
    deidentify: bool,
    viewer_base: str | None = None,
) -> dict[str, Any]:
    """One PACS series through skip-check, retrieval, segmentation and storage; its dashboard row.

    Args:
        series: ``SeriesInfo.to_json()``.
        case: its case id (bundle folder name).
        url: DICOMweb root.
        auth: ``PacsAuth`` fields (where the secret is).
        verify_tls: verify the TLS certificate (or a CA bundle path).
        out_dir: the output folder.
        model_dir: checkpoint or ensemble folder.
        versions: model/config versions (the input's is added here, from the retrieved files).
        case_config: ``CaseConfig`` fields.
        settings: ``PacsConfig`` fields.
        description: series description of our results (model and version): the rerun check's mark.
        link: the study in the PACS UI.
        deidentify: pseudonymous bundle name, de-identified SEG/RTSTRUCT, no PACS address or
            UIDs in the manifest; nothing stored in the PACS.
        viewer_base: where OHIF serves this PACS (``deconvseg viewer``): the bundle and the row get the
            case's ``viewer_url`` (not with ``deidentify``).

    Returns:
        The row (``deconvseg.flows.dashboard.case_row``) with ``link``, ``stored`` (SOP Instance
        UIDs stored) and ``timings`` (``check``, ``retrieve``, ``segment``, ``store`` seconds).
    """
    info = SeriesInfo.from_json(series)
    config = PacsConfig(**settings)
    client = connect(url, PacsAuth(**auth).credentials(), verify_tls=verify_tls, timeout_s=config.http_timeout_s)
    out, timings = Path(out_dir), {}
    bundle = out / case
    start = time.perf_counter()
    store = not deidentify
    found = stored_results(client, info, description) if store else []
    timings["check"] = time.perf_counter() - start
    if found:
        row = (
            dashboard.row_from_bundle(case, bundle, status="cached")
            if (bundle / "stats.json").is_file()
            else dashboard.case_row(case, "cached", 0.0, "", [])
        )
        return {**row, "reason": "already in the PACS", "link": link, "stored": [], "timings": timings}
    incoming = out / INCOMING / case
    try:
        mark = time.perf_counter()
        retrieve_series(client, info, incoming)
        timings["retrieve"] = time.perf_counter() - mark
        mark = time.perf_counter()
        case_versions = {**versions, "input": path_digest(incoming)}
        key = cache_key(case_versions)
        if _bundle_key(bundle) == key:
            row = dashboard.row_from_bundle(case, bundle, status="cached")
        else:
            source = (
                {}
                if deidentify
                else {
                    "pacs": public_url(url),
                    "study_instance_uid": info.study_uid,
                    "series_instance_uid": info.series_uid,
                }
            )
            row = segment_input(
                CaseInput(case, incoming, info.modality or None),
                out,
                model_dir,
                case_versions,
                case_config,
                config.threads,
                {"cache_key": key, "versions": case_versions, "source": source},
                None if deidentify else viewer_base,
            )
        timings["segment"] = time.perf_counter() - mark
    finally:
        shutil.rmtree(incoming, ignore_errors=True)
    results = [bundle / "rtstruct.dcm", bundle / "seg.dcm"]  # the SEG, our completion mark, last
    stored: list[str] = []
    if deidentify:
        deidentify_files([p for p in results if p.is_file()], case)
    elif all(p.is_file() for p in results):
        mark = time.perf_counter()
        set_series_description(results, description)
        stored = store_instances(client, results)
        timings["store"] = time.perf_counter() - mark
    return {
        **row,
        "seconds": round(time.perf_counter() - start, 2),
        "link": _viewer_url(bundle) or link,
        "stored": stored,
        "timings": {k: round(v, 3) for k, v in timings.items()},
    }


@flow(name="pacs-pass", validate_parameters=True)
def pacs_pass(
    url: str,
    out: str,
    model: str | None = None,
    query: dict[str, Any] | None = None,
    auth: dict[str, Any] | None = None,
    config: dict[str, Any] | None = None,
    verify_tls: bool | str = True,
    viewer_url: str | None = None,
    deidentify: bool = False,
) -> State:
    """One pass over a DICOMweb PACS: query, then one ``pacs-series`` task per series.

    Args:
        url: DICOMweb root, e.g. ``http://127.0.0.1:8042/dicom-web``.
        out: output folder (review bundles, ``batch.json``, ``.pacs-state.json``).
        model: checkpoint or ensemble folder (default: the bundled phantom CT model).
        query: ``SeriesQuery`` fields; without ``since``/``until`` the pass starts at the source's
            last successful run.
        auth: ``PacsAuth`` fields (where the secret is).
        config: ``PacsConfig`` fields.
        verify_tls: verify the PACS's TLS certificate (or a CA bundle path).
        viewer_url: the OHIF base beside the PACS (``deconvseg viewer``; every case gets a ``viewer_url`` that
            opens its study with our SEG shown), or, with ``{study}``, ``{series}`` or ``{orthanc_study}`` in
            it, a pattern of a study's page in the PACS UI.
        deidentify: pseudonymous case names and de-identified bundles; nothing is stored in the PACS.

    Returns:
        ``Completed`` or ``Failed`` (a case failed); its data is the summary (``<out>/batch.json``).
    """
    settings = validate_config(config or {}, PacsConfig, source="pacs config")
    deidentify = deidentify or settings.deidentify  # the flag, or the config's default
    validate_config(auth or {}, PacsAuth, source="pacs auth")
    started = dt.datetime.now()
    model_dir = str(Path(model).expanduser().resolve()) if model else str(DEFAULT_MODEL)
    out_dir = Path(out).expanduser().resolve()
    source = public_url(url)
    search = SeriesQuery(**(query or {}))
    key = source_key(source, {"modality": search.modality, "description": search.description})
    if search.since is None and search.until is None:
        search = SeriesQuery(**{**(query or {}), "since": last_success(out_dir, key)})
    client = connect(
        url, PacsAuth(**(auth or {})).credentials(), verify_tls=verify_tls, timeout_s=settings.http_timeout_s
    )
    mark = time.perf_counter()
    found = find_series(client, search)
    query_s = time.perf_counter() - mark
    versions = {
        "model": model_version(model_dir),
        "config": config_version({**settings.case_settings(), "deidentify": deidentify}),
    }
    description = result_description(_ensemble(model_dir, versions["model"]).name, versions["model"])
    cases = {case_id(s, pseudonymous=deidentify): s.to_json() for s in found}
    viewer_base = check_viewer_base(viewer_url) if viewer_url and "{" not in viewer_url else None
    links = {
        case: viewer_link(None if viewer_base else viewer_url, source, SeriesInfo.from_json(s))
        for case, s in cases.items()
    }
    runner = make_task_runner(None, None, settings.max_workers)
    summary = pacs_cases.with_options(task_runner=runner)(
        cases,
        url,
        out_dir,
        model_dir,
        auth or {},
        verify_tls,
        settings.model_dump(),
        versions,
        description,
        links,
        deidentify,
        viewer_base,
    )
    summary["pacs"] = {
        "url": source,
        "query": {**search.__dict__},
        "query_s": round(query_s, 3),
        "description": description,
    }
    write_json_atomic(out_dir / "batch.json", summary)
    message = dashboard.state_message(summary["counts"])
    if summary["counts"]["failed"]:
        return Failed(message=message, data=summary)
    record_success(out_dir, key, source, started)
    return Completed(message=message, data=summary)


@flow(name="pacs-cases")
def pacs_cases(
    cases: dict[str, dict[str, Any]],
    url: str,
    out_dir: Path,
    model_dir: str,
    auth: dict[str, Any],
    verify_tls: bool | str,
    config: dict[str, Any],
    versions: dict[str, str],
    description: str,
    links: dict[str, str],
    deidentify: bool,
    viewer_base: str | None = None,
) -> dict[str, Any]:
    """The body of ``pacs_pass``: one ``pacs-series`` task per series on the pass's task runner
    (``max_workers`` series at once), rows as they finish, the dashboard; see ``pacs_pass``.

    Returns:
        The summary (``deconvseg.flows.dashboard.publish``); failed series are rows, not an exception.
    """
    settings = PacsConfig(**config)
    with batch_lock(out_dir):
        sweep_partial(out_dir, list(cases))
        progress = dashboard.Progress(settings.dashboard_key, len(cases))
        start = time.perf_counter()
        case_task = pacs_series.with_options(
            retries=settings.retries, retry_delay_seconds=exponential_backoff(settings.retry_delay_s)
        )
        case_config = {
            "inference": {**settings.case_inference(settings.max_workers), "threads": settings.threads},
            "timeout_s": settings.case_timeout_s,
            "allow_domain_mismatch": settings.allow_domain_mismatch,
            "deidentify": deidentify,
            "channel": settings.channel,
        }
        futures = {}
        for case, series in cases.items():
            future = case_task.submit(
                series,
                case,
                url,
                auth,
                verify_tls,
                str(out_dir),
                model_dir,
                versions,
                case_config,
                config,
                description,
                links[case],
                deidentify,
                viewer_base,
            )
            futures[future.task_run_id] = (future, case)
        rows = []
        for future in as_completed([f for f, _ in futures.values()]):
            future.wait()
            case = futures[future.task_run_id][1]
            outcome = future.result(raise_on_failure=False)
            if isinstance(outcome, BaseException):
                reason = one_line(outcome)
                if isinstance(outcome, PacsError) and outcome.transient:
                    reason += f" (gave up after {settings.retries + 1} tries)"
                rows.append({**dashboard.failed_row(case, reason), "link": links[case]})
            else:
                rows.append(outcome)
            progress.advance()
        shutil.rmtree(out_dir / INCOMING, ignore_errors=True)
        return dashboard.publish(
            rows, out_dir, time.perf_counter() - start, settings.dashboard_key, settings.report_base_url
        )


def run_once(request: PacsRequest) -> int:
    """One pass now; one line per failed case and a summary line. 0 when every series succeeded."""
    state = pacs_pass(**request.parameters(), return_state=True)
    summary = state.result(raise_on_failure=False)
    if not isinstance(summary, dict):
        reason = summary if isinstance(summary, BaseException) else state.message
        print(
            f"error: {reason}" if isinstance(summary, DeconvsegError) else f"error: pacs pass failed: {reason}",
            file=sys.stderr,
        )
        return 2 if isinstance(summary, DeconvsegError) else 1
    for row in summary["rows"]:
        if row["status"] == "failed":
            print(f"failed: {row['case']}: {row['reason']}", file=sys.stderr)
    stored = sum(len(row.get("stored") or []) for row in summary["rows"])
    print(
        f"{state.message}; {stored} instances stored; {summary['seconds']:.1f} s; bundles and batch.json in "
        f"{summary['out']}"
    )
    if request.print_json:
        print(json.dumps({k: summary[k] for k in ("out", "seconds", "cases_per_min", "counts")}))
    return 1 if summary["counts"]["failed"] else 0


def main(argv: list[str]) -> int:
    """Entry point of the child process: the ``PacsRequest`` as JSON on standard input (``argv`` empty).
    Ends with the CLI that started it (``deconvseg.flows.lifeline``)."""
    try:
        request = read_child_request("deconvseg.flows.pacs", argv, PacsRequest)
        if request.cron:
            pacs_pass.serve(
                name=request.name,
                cron=request.cron,
                parameters=request.parameters(),
                description=f"deconvseg PACS pass over {public_url(request.url)} into {request.out}",
            )
            return 0
        return run_once(request)
    except DeconvsegError as err:
        print(f"error: {terminal_text(str(err))}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
