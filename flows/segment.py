"""Prefect flows that segment scans: the ``segment-case`` task and the ``segment_batch`` flow.

The case is the unit of work, concurrency, caching, retry and failure: one task reads the input,
runs ``deconvseg.pipeline.segment.segment_case`` (every network of the ensemble, fusion, refinement) and
writes the review bundle. Cases run concurrently on the chosen task runner (threads or Dask).

Tasks pass **paths**, never arrays (a task's inputs and result stay a few hundred bytes, so
memory does not grow with the batch and Dask ships nothing heavy). A case is keyed on the
**content hash** of its input plus the model's and the configuration's versions
(``cache_key``); a rerun skips a case whose review bundle on disk carries the same key (from the
second rerun on, Prefect's cache record shows it ``Cached``). A deleted bundle is recomputed.

Transient errors (``OSError`` other than a missing or forbidden path) are retried with
exponential backoff; anything else fails the case at once. A failed case is recorded with its
one-line reason while the other cases finish; the flow ends ``Failed`` with a message such as
``"1 of 4 cases failed (3 segmented, 0 cached)"`` when any case failed, else ``Completed``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import time
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.futures import as_completed
from prefect.states import Completed, Failed, State
from prefect.tasks import exponential_backoff

from deconvseg.flows import dashboard
from deconvseg.flows.inputs import DEFAULT_MODEL, BatchConfig, cache_key, config_version, discover_cases
from deconvseg.flows.outputs import batch_lock, sweep_partial
from deconvseg.flows.progress import stage_lines
from deconvseg.flows.runners import make_task_runner
from deconvseg.pipeline.case import CaseInput
from deconvseg.pipeline.ensemble import Ensemble, model_version
from deconvseg.pipeline.errors import DeconvsegError

_NOT_TRANSIENT = (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)


def is_transient(exc: BaseException) -> bool:
    """True for errors worth retrying: I/O hiccups (``OSError``), not missing/forbidden paths and
    not a case that ran out of its time (``case_timeout_s``)."""
    return isinstance(exc, OSError) and not isinstance(exc, _NOT_TRANSIENT)


def one_line(exc: BaseException) -> str:
    """The one-line reason shown on the dashboard (our errors already are one line)."""
    text = str(exc) if isinstance(exc, DeconvsegError) else f"{type(exc).__name__}: {exc}"
    text = " ".join(text.split())
    return text if len(text) <= 400 else text[:397] + "..."


def _retry_transient(task: Any, task_run: Any, state: State) -> bool:
    """Prefect ``retry_condition_fn``: retry only when the case raised a transient error."""
    return is_transient(state.result(raise_on_failure=False))


def _bundle_manifest(parameters: dict[str, Any]) -> Path:
    return Path(parameters["out_dir"]) / parameters["case"]["case_id"] / "manifest.json"


def _bundle_is_current(parameters: dict[str, Any]) -> bool:
    """True when the case's bundle is on disk and was made from the same input, model and config."""
    try:
        return json.loads(_bundle_manifest(parameters).read_text()).get("cache_key") == parameters["key"]
    except (OSError, ValueError):
        return False


def _cache_key_fn(context: Any, parameters: dict[str, Any]) -> str | None:
    """Prefect's cache key: the case key tied to the bundle on disk (its manifest's mtime), or
    no caching while that bundle is missing or stale; a deleted or rewritten bundle never hits an
    old record. The first rerun finds the bundle inside the task; later ones are ``Cached``."""
    if not _bundle_is_current(parameters):
        return None
    stamp = _bundle_manifest(parameters).stat().st_mtime_ns
    return hashlib.sha256(f"{parameters['key']}:{stamp}".encode()).hexdigest()


@functools.lru_cache(maxsize=2)
def _ensemble(model_dir: str, version: str) -> Ensemble:
    """The model, loaded once per process (``version`` keys the cache)."""
    from deconvseg.pipeline.ensemble import load_ensemble

    return load_ensemble(model_dir)


@task(
    name="segment-case",
    cache_key_fn=_cache_key_fn,
    persist_result=True,
    retry_condition_fn=_retry_transient,
    task_run_name="segment-{case[case_id]}",
)
def segment_case(
    case: dict[str, Any],
    out_dir: str,
    model_dir: str,
    key: str,
    versions: dict[str, str],
    config: dict[str, Any],
    threads: int,
) -> dict[str, Any]:
    """Segment one input into its review bundle through the case API (``deconvseg.pipeline.case.run_case``).

    Args:
        case: ``CaseInput.to_json()`` (case id, input path, optional modality).
        out_dir: folder that receives ``<case_id>/``.
        model_dir: checkpoint or ensemble folder.
        key: the case's cache key (stored in the bundle's manifest).
        versions: input/model/config versions for the manifest.
        config: ``CaseConfig`` fields. Its ``timeout_s`` is enforced by ``deconvseg.pipeline.guards.time_limit``
            rather than Prefect's ``timeout_seconds``, whose ordinary ``TimeoutError`` library code may
            catch (a DICOM slice silently skipped, a misleading reason).
        threads: torch threads for this case.

    Returns:
        The case's dashboard row (see ``deconvseg.flows.dashboard.case_row``).
    """
    item = CaseInput.from_json(case)
    if _bundle_is_current({"out_dir": out_dir, "case": case, "key": key}):
        return dashboard.row_from_bundle(item.case_id, Path(out_dir) / item.case_id, status="cached")
    return segment_input(item, out_dir, model_dir, versions, config, threads, {"cache_key": key, "versions": versions})


def segment_input(
    case: CaseInput,
    out_dir: str | Path,
    model_dir: str,
    versions: dict[str, str],
    config: dict[str, Any],
    threads: int,
    record: dict[str, Any],
    viewer_base: str | None = None,
) -> dict[str, Any]:
    """Run one input through the case API in this worker (the batch and the PACS tasks): torch threads set
    here, the model loaded once per process; returns the dashboard row.

    Args:
        case: the input.
        out_dir: folder that receives ``<case_id>/``.
        model_dir: checkpoint or ensemble folder.
        versions: model/config/input versions (``versions["model"]`` keys the loaded-model cache).
        config: ``CaseConfig`` fields.
        threads: torch threads.
        record: the manifest's additions (cache key, versions, source).
        viewer_base: OHIF base of a PACS case (``run_case(viewer_base=...)``).
    """
    import torch
    from prefect import get_run_logger

    from deconvseg.pipeline.case import CaseConfig, run_case

    torch.set_num_threads(threads)
    ensemble = _ensemble(model_dir, versions["model"])
    progress = stage_lines(case.case_id, get_run_logger().info)  # a log line per stage and member in the UI
    summary = run_case(
        case, ensemble, CaseConfig(**config), out_dir, record=record, viewer_base=viewer_base, progress=progress
    )
    return dashboard.summary_row(summary)


@flow(name="segment-batch", validate_parameters=True)
def segment_batch(
    source: str,
    out: str,
    model: str | None = None,
    config: dict[str, Any] | None = None,
    dask_address: str | None = None,
    dask_workers: int | None = None,
) -> State:
    """Segment every case of a folder (NIfTI/NRRD/MHA files, DICOM series folders) or manifest CSV.

    The cases run in the sub-flow ``segment-cases`` on the task runner chosen here (threads, a
    local Dask cluster or an existing one), so a deployment picks its runner by parameters.

    Args:
        source: input folder or manifest CSV (``case_id,image[,label][,modality]``).
        out: output folder; one review bundle per case lands in ``<out>/<case_id>/``.
        model: checkpoint or ensemble folder (default: the bundled phantom CT model).
        config: ``BatchConfig`` fields (validated).
        dask_address: run the cases on this Dask scheduler.
        dask_workers: run the cases on a local Dask cluster of this many worker processes.

    Returns:
        ``Completed`` or ``Failed`` whose message counts the failures; its data is the summary
        that is also written to ``<out>/batch.json``.
    """
    from deconvseg.pipeline.config import validate_config

    settings = validate_config(config or {}, BatchConfig, source="batch config")
    runner = make_task_runner(dask_address, dask_workers, settings.max_workers)
    # Cases sharing this machine's memory; a remote cluster's workers are its own business.
    at_once = 1 if dask_address else dask_workers or settings.max_workers
    summary = segment_cases.with_options(task_runner=runner)(source, out, model, settings.model_dump(), at_once)
    message = dashboard.state_message(summary["counts"])
    return (
        Failed(message=message, data=summary)
        if summary["counts"]["failed"]
        else Completed(message=message, data=summary)
    )


@flow(name="segment-cases")
def segment_cases(
    source: str, out: str, model: str | None, config: dict[str, Any], cases_at_once: int = 1
) -> dict[str, Any]:
    """The body of ``segment_batch``: discover, submit one ``segment-case`` task per case, collect
    outcomes as they finish (progress artifact), publish the dashboard; see ``segment_batch``.
    ``cases_at_once`` cases share the memory budget (``BatchConfig.case_inference``).

    Returns:
        The summary (``deconvseg.flows.dashboard.publish``); failed cases are rows, not an exception.
    """
    settings = BatchConfig(**config)
    model_dir = str(Path(model).expanduser().resolve()) if model else str(DEFAULT_MODEL)
    out_dir = Path(out).expanduser().resolve()
    cases = discover_cases(Path(source).expanduser())
    versions = {"model": model_version(model_dir), "config": config_version(settings.case_settings())}
    with batch_lock(out_dir):
        sweep_partial(out_dir, [item.case_id for item in cases])
        progress = dashboard.Progress(settings.dashboard_key, len(cases))
        start = time.perf_counter()
        rows = _run_cases(cases, out_dir, model_dir, versions, settings, progress, cases_at_once)
        return dashboard.publish(
            rows, out_dir, time.perf_counter() - start, settings.dashboard_key, settings.report_base_url
        )


def _run_cases(
    cases: list[CaseInput],
    out_dir: Path,
    model_dir: str,
    versions: dict[str, str],
    settings: BatchConfig,
    progress: dashboard.Progress,
    cases_at_once: int,
) -> list[dict[str, Any]]:
    """Submit one ``segment-case`` task per case; a row per case as each finishes."""
    case_task = segment_case.with_options(
        retries=settings.retries, retry_delay_seconds=exponential_backoff(settings.retry_delay_s)
    )
    inference = {**settings.case_inference(cases_at_once), "threads": settings.threads}
    config = {
        "inference": inference,
        "timeout_s": settings.case_timeout_s,
        "allow_domain_mismatch": settings.allow_domain_mismatch,
        "deidentify": settings.deidentify,
        "channel": settings.channel,
    }
    rows: list[dict[str, Any]] = []
    futures = {}
    for item in cases:
        try:
            input_version = item.content_hash()
        except OSError as err:
            rows.append(dashboard.failed_row(item.case_id, one_line(err)))
            progress.advance()
            continue
        case_versions = {**versions, "input": input_version}
        future = case_task.submit(
            item.to_json(), str(out_dir), model_dir, cache_key(case_versions), case_versions, config, settings.threads
        )
        futures[future.task_run_id] = (future, item)
    for future in as_completed([future for future, _ in futures.values()]):
        future.wait()
        item = futures[future.task_run_id][1]
        outcome = future.result(raise_on_failure=False)
        if isinstance(outcome, BaseException):
            rows.append(dashboard.failed_row(item.case_id, one_line(outcome)))
        else:
            rows.append({**outcome, "status": "cached"} if future.state.name == "Cached" else outcome)
        progress.advance()
    return rows
