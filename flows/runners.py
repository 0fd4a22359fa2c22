"""Where a batch's cases run: threads in the flow's process, or a Dask cluster via prefect-dask.

- default: ``ThreadPoolTaskRunner(max_workers)``; torch releases the GIL, so cases overlap.
- ``dask_workers=N``: a ``distributed.LocalCluster`` of N single-threaded worker processes,
  created for the run and closed after it.
- ``dask_address="tcp://host:8786"``: an existing cluster, e.g. one started by dask-jobqueue
  (``SLURMCluster(...).scheduler_address``) or dask-kubernetes (``KubeCluster(...)``). Its workers
  need this package installed, read access to the inputs, write access to the output folder,
  and ``PREFECT_API_URL`` pointing at a Prefect server they can reach.

No home-made scheduling: every choice is a Prefect task runner.
"""

from __future__ import annotations

from typing import Any


def make_task_runner(dask_address: str | None = None, dask_workers: int | None = None,
                     max_workers: int = 1) -> Any:
    """The Prefect task runner for a batch.

    Args:
        dask_address: scheduler address of an existing Dask cluster.
        dask_workers: size of a local Dask cluster (worker processes, one thread each).
        max_workers: threads of the default runner (used when neither Dask option is given).

    Returns:
        A ``prefect_dask.DaskTaskRunner`` or a ``prefect.task_runners.ThreadPoolTaskRunner``.
    """
    if dask_address or dask_workers:
        from prefect_dask import DaskTaskRunner

        if dask_address:
            return DaskTaskRunner(address=dask_address)
        return DaskTaskRunner(cluster_kwargs={"n_workers": int(dask_workers), "threads_per_worker": 1,
                                              "processes": True, "dashboard_address": None})
    from prefect.task_runners import ThreadPoolTaskRunner

    return ThreadPoolTaskRunner(max_workers=max_workers)
