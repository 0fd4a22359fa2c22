"""Where a flow's tasks run (a batch's cases, a training's members): threads in the flow's process,
or a Dask cluster via prefect-dask; and the child process a CLI command runs its flow in.

- default: ``ThreadPoolTaskRunner(max_workers)``; torch releases the GIL, so cases overlap.
- ``dask_workers=N``: a ``distributed.LocalCluster`` of N single-threaded worker processes,
  created for the run and closed after it; ``worker_resources`` (e.g. ``{"GPU": 1}``) are declared
  by every worker, so tasks that ask for one run one per worker.
- ``dask_address="tcp://host:8786"``: an existing cluster, e.g. one started by dask-jobqueue
  (``SLURMCluster(...).scheduler_address``) or dask-kubernetes (``KubeCluster(...)``). Its workers
  need this package installed, read access to the inputs, write access to the output folder,
  and ``PREFECT_API_URL`` pointing at a Prefect server they can reach.

No home-made scheduling: every choice is a Prefect task runner.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel

# A local cluster's workers may start processes of their own (DataLoader workers): Dask makes its
# worker processes daemons by default, and daemons cannot have children.
NON_DAEMON_WORKERS = {"DASK_DISTRIBUTED__WORKER__DAEMON": "False"}
M = TypeVar("M", bound=BaseModel)


def make_task_runner(
    dask_address: str | None = None,
    dask_workers: int | None = None,
    max_workers: int = 1,
    worker_resources: dict[str, float] | None = None,
) -> Any:
    """The Prefect task runner for a batch or a training run.

    Args:
        dask_address: scheduler address of an existing Dask cluster.
        dask_workers: size of a local Dask cluster (worker processes, one thread each).
        max_workers: threads of the default runner (used when neither Dask option is given).
        worker_resources: abstract resources every worker of a local cluster declares.

    Returns:
        A ``prefect_dask.DaskTaskRunner`` or a ``prefect.task_runners.ThreadPoolTaskRunner``.
    """
    if dask_address or dask_workers:
        from prefect_dask import DaskTaskRunner

        if dask_address:
            return DaskTaskRunner(address=dask_address)
        cluster: dict[str, Any] = {
            "n_workers": int(dask_workers or 1),
            "threads_per_worker": 1,
            "processes": True,
            "dashboard_address": None,
        }
        if worker_resources:
            cluster["resources"] = dict(worker_resources)
        return DaskTaskRunner(cluster_kwargs=cluster)
    from prefect.task_runners import ThreadPoolTaskRunner

    return ThreadPoolTaskRunner(max_workers=max_workers)


def run_flow_child(
    module: str, request: dict[str, Any], home: Path | None, api_url: str | None, local_cluster: bool
) -> int:
    """Run ``python -m <module>`` in an offline child process with ``request`` as JSON on its standard
    input (settings never travel on a command line, where ``ps`` shows them); its exit status.

    A local Dask cluster gets a loopback ``prefect server start`` for the run when no API URL is
    given (otherwise every worker would start its own embedded server), and non-daemonic workers.
    When this process is interrupted or terminated, the child is stopped too; when it dies, even by
    SIGKILL, the child (which calls ``read_child_request``) ends with everything it started.
    """
    from deconvseg.flows.prefect_env import local_server, prefect_environment, stop_process

    command = [sys.executable, "-m", module]
    with local_server(home) if local_cluster and not api_url else contextlib.nullcontext(api_url) as url:
        env = {**prefect_environment(home, api_url=url), **(NON_DAEMON_WORKERS if local_cluster else {})}
        previous = signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
        process = subprocess.Popen(command, env=env, stdin=subprocess.PIPE, text=True)
        try:
            process.communicate(json.dumps(request))  # writes, closes stdin, waits
            return process.returncode
        finally:
            signal.signal(signal.SIGTERM, previous)
            if process.poll() is None:
                stop_process(process, grace_s=30)


def read_child_request(module: str, argv: list[str], model: type[M]) -> M:
    """In a child that ``run_flow_child`` started: end with the parent (``deconvseg.flows.lifeline``), then
    read and validate the request from standard input.

    Raises:
        ConfigError: arguments were given, the input is not JSON, or a key is unknown or invalid.
    """
    from deconvseg.flows.lifeline import watch_parent_from_environment
    from deconvseg.pipeline.config import validate_config
    from deconvseg.pipeline.errors import ConfigError

    watch_parent_from_environment()
    if argv:
        raise ConfigError(f"python -m {module} takes no arguments; pass the request as JSON on standard input")
    try:
        data = json.loads(sys.stdin.read())
    except ValueError as err:
        raise ConfigError(f"{module}: the request on standard input is not JSON ({err}); pass one JSON object") from err
    return validate_config(data, model, source=f"{module} request")
