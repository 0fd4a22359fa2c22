"""Run a batch once or serve it on a cron schedule; the process the ``deconvseg batch`` CLI starts.

``python -m deconvseg.flows.serve < request.json`` runs in a child process whose environment
``deconvseg.flows.prefect_env`` prepared (offline, quiet, its own ``PREFECT_HOME``), so nothing here touches
``os.environ``. One-off runs without ``PREFECT_API_URL`` use Prefect's embedded server;
schedules need a real one::

    prefect server start --host 127.0.0.1            # UI and API on http://127.0.0.1:4200
    deconvseg batch /data/incoming --out /data/seg --cron "0 2 * * *" \\
        --api-url http://127.0.0.1:4200/api

``flow.serve`` registers the deployment ``segment-batch/<name>`` with its schedule and runs each
scheduled flow run in a subprocess until stopped (Ctrl-C pauses the schedule). Teams with work
pools deploy the same flow from ``prefect.yaml`` instead.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from deconvseg.flows.runners import read_child_request
from deconvseg.pipeline.config import Settings
from deconvseg.pipeline.errors import DeconvsegError
from deconvseg.pipeline.sanitize import terminal_text


class BatchRequest(Settings):
    """What the CLI asks for (see ``deconvseg.flows.segment.segment_batch`` for the flow parameters).

    Attributes:
        cron: serve on this schedule instead of running once.
        name: deployment name when serving.
        print_json: print the summary as one JSON line at the end of a one-off run.
    """

    source: str
    out: str
    model: str | None = None
    config: dict[str, Any] = {}
    dask_address: str | None = None
    dask_workers: int | None = None
    cron: str | None = None
    name: str = "nightly"
    print_json: bool = False

    def parameters(self) -> dict[str, Any]:
        """The flow's parameters."""
        return {
            "source": self.source,
            "out": self.out,
            "model": self.model,
            "config": self.config,
            "dask_address": self.dask_address,
            "dask_workers": self.dask_workers,
        }


def run_once(request: BatchRequest) -> int:
    """Run the batch now; print one line per failed case and a summary line.

    Returns:
        0 when every case finished, 1 when any case failed.
    """
    from deconvseg.flows.segment import segment_batch

    state = segment_batch(**request.parameters(), return_state=True)
    summary = state.result(raise_on_failure=False)
    if not isinstance(summary, dict):
        reason = summary if isinstance(summary, BaseException) else state.message
        print(f"error: batch failed: {terminal_text(str(reason))}", file=sys.stderr)
        return 2 if isinstance(summary, DeconvsegError) else 1
    for row in summary["rows"]:
        if row["status"] == "failed":
            print(f"failed: {row['case']}: {terminal_text(str(row['reason']))}", file=sys.stderr)
    print(
        f"{state.message}; {summary['seconds']:.1f} s, {summary['cases_per_min']:.1f} cases/min; "
        f"bundles and batch.json in {summary['out']}"
    )
    if request.print_json:
        print(json.dumps({k: summary[k] for k in ("out", "seconds", "cases_per_min", "counts")}))
    return 1 if summary["counts"]["failed"] else 0


def serve(request: BatchRequest) -> None:
    """Register ``segment-batch/<name>`` with a cron schedule and run its flow runs until stopped."""
    from deconvseg.flows.segment import segment_batch

    segment_batch.serve(
        name=request.name,
        cron=request.cron,
        parameters=request.parameters(),
        description=f"deconvseg batch of {request.source} into {request.out}",
    )


def main(argv: list[str]) -> int:
    """Entry point of the child process: the request is one JSON document on standard input (never on
    the command line, where ``ps`` shows it to every user); ``argv`` must be empty.

    The process, and everything it starts (Prefect's temporary server, Dask workers, scheduled
    flow runs), ends when the CLI that started it ends (``deconvseg.flows.lifeline``).
    """
    try:
        request = read_child_request("deconvseg.flows.serve", argv, BatchRequest)
        if request.cron:
            serve(request)
            return 0
        return run_once(request)
    except DeconvsegError as err:
        print(f"error: {terminal_text(str(err))}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
