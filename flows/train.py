"""Training as the plain call the CLI makes, and as a Prefect flow that trains members side by side.

``run_training`` is what ``deconvseg train CONFIG`` runs: validate the YAML, prepare the data once,
train the members in order with a rich progress bar (loss, validation Dice), write ``ensemble.json``.

``train_flow`` trains one member per task on the task runner chosen by its parameters
(``deconvseg.flows.runners``): a local Dask cluster of N worker processes (``--workers N``) or an
existing cluster (``--dask ADDRESS``, e.g. from dask-jobqueue on Slurm). Members are independent, so
they run side by side; each worker prepares the data once. On a GPU device every task asks the
scheduler for one ``GPU`` resource, so a worker started with ``--resources GPU=1`` trains one
member at a time on its GPU. Every task trains or resumes ``<out>/<member>`` (finished members are
kept), and once all are finished the flow gathers them into ``ensemble.json``: an interrupted run
is continued by running it again.

``python -m deconvseg.flows.train REQUEST`` runs the flow in a child process whose environment the
CLI sets (offline Prefect, a loopback server for a local cluster).
"""

from __future__ import annotations

import contextlib
import functools
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prefect import flow, task

from deconvseg.flows.runners import make_task_runner, read_child_request
from deconvseg.pipeline.config import Settings, load_config
from deconvseg.pipeline.devices import check_device_name, resolve_device
from deconvseg.pipeline.errors import ConfigError, DeconvsegError
from deconvseg.pipeline.training.data import DataConfig, TrainingData, load_training_data
from deconvseg.pipeline.training.trainer import Callback, TrainConfig, TrainEvent, ensure_member, train_ensemble


@contextlib.contextmanager
def progress_callback(config: TrainConfig) -> Iterator[Callback]:
    """A rich progress bar per member showing step, loss, latest and best validation Dice."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"),
        TextColumn("val Dice {task.fields[dice]} (best {task.fields[best]})"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns) as bar:
        tasks: dict[str, Any] = {}

        def update(event: TrainEvent) -> None:
            if event.member not in tasks:
                tasks[event.member] = bar.add_task(event.member, total=event.total, loss="-", dice="-", best="-")
            fields: dict[str, Any] = {"loss": f"{event.loss:.3f}"}
            if event.validated:
                fields.update(dice=f"{event.val_dice:.4f}", best=f"{event.best_dice:.4f}")
            bar.update(tasks[event.member], completed=event.step, **fields)

        yield update


def load_train_config(
    config_path: str | Path, overrides: dict[str, Any] | None = None, local: bool = True
) -> TrainConfig:
    """The validated config, its device checked on this machine (one line naming the devices that
    exist) when it trains here (``local``), else its device name's form only (a remote cluster's)."""
    config = load_config(config_path, TrainConfig, overrides)
    (resolve_device if local else check_device_name)(config.device, "device")
    return config


def run_training(
    config_path: str | Path,
    overrides: dict[str, Any] | None = None,
    progress: bool = True,
    only: list[str] | None = None,
) -> dict[str, Any]:
    """Train the ensemble of a YAML config (or only some members) in this process, one member after
    the other; returns ``ensemble.json``'s content."""
    import torch

    config = load_train_config(config_path, overrides)
    torch.set_num_threads(config.threads)
    data = load_training_data(config.data)
    if not progress:
        return train_ensemble(config, data, only=only)
    with progress_callback(config) as callback:
        return train_ensemble(config, data, callback, only=only)


@functools.lru_cache(maxsize=1)
def _prepared(data_json: str) -> TrainingData:
    """The training data of a ``DataConfig`` (JSON), prepared once per worker process."""
    return load_training_data(DataConfig.model_validate_json(data_json))


def worker_device(device: str) -> str:
    """The device of this Dask worker: ``device``, except that ``auto``/``cuda`` on a machine with
    several GPUs picks ``cuda:<worker number modulo the GPU count>`` (a local cluster's workers are
    numbered 0..N-1), so that each worker of one machine trains on its own GPU."""
    import torch

    resolved = resolve_device(device, "device")
    if resolved.type != "cuda" or ":" in check_device_name(device) or torch.cuda.device_count() < 2:
        return str(resolved)
    from distributed import get_worker

    name = get_worker().name
    return f"cuda:{int(name) % torch.cuda.device_count()}" if str(name).isdigit() else str(resolved)


@task
def train_one(config: TrainConfig, member_name: str, on_dask: bool = False) -> dict[str, Any]:
    """Prefect task: train or resume ``config.out/<member>`` (``deconvseg.pipeline.training.trainer.ensure_member``)
    with the config's torch threads, on this worker's device."""
    import multiprocessing

    import torch

    if config.loader.num_workers and multiprocessing.current_process().daemon:
        raise ConfigError(
            "loader.num_workers > 0 needs Dask workers that may start processes; start them with "
            "DASK_DISTRIBUTED__WORKER__DAEMON=False (deconvseg train --workers does) or set loader.num_workers: 0"
        )
    torch.set_num_threads(config.threads)
    if on_dask:
        config = config.model_copy(update={"device": worker_device(config.device)})
    member = next(m for m in config.members if m.name == member_name)
    return ensure_member(config, member, _prepared(config.data.model_dump_json()))


@flow(name="train-members")
def train_members(config: TrainConfig, on_dask: bool, gpu: bool) -> list[str]:
    """Submit one ``train_one`` task per member (asking for a ``GPU`` resource on a GPU device) and
    wait for all; returns the member names."""
    import dask

    resources = {"resources": {"GPU": 1}} if on_dask and gpu else {}
    with dask.annotate(**resources):
        futures = [train_one.submit(config, member.name, on_dask) for member in config.members]
    for future in futures:
        future.result()
    return [member.name for member in config.members]


@flow(name="train")
def train_flow(
    config_path: str,
    overrides: dict[str, Any] | None = None,
    dask_address: str | None = None,
    dask_workers: int | None = None,
) -> dict[str, Any]:
    """Train every member of a config as its own task (side by side on Dask), then write ``ensemble.json``.

    Args:
        config_path: the training YAML.
        overrides: config keys replaced (validated with the file).
        dask_address: train on this Dask scheduler (its workers declare ``--resources GPU=1`` for GPUs).
        dask_workers: train on a local Dask cluster of this many single-threaded worker processes
            (each with one ``GPU`` resource when the device is a GPU).

    Returns:
        ``ensemble.json``'s content.
    """
    import torch

    config = load_train_config(config_path, overrides, local=not dask_address)
    torch.set_num_threads(config.threads)
    # A remote cluster's devices are not visible here: only an explicit cuda name asks for GPUs there.
    gpu = (
        check_device_name(config.device).startswith("cuda")
        if dask_address
        else resolve_device(config.device, "device").type == "cuda"
    )
    on_dask = bool(dask_address or dask_workers)
    runner = make_task_runner(dask_address, dask_workers, max_workers=1, worker_resources={"GPU": 1} if gpu else None)
    train_members.with_options(task_runner=runner)(config, on_dask, gpu)
    # Every member is finished now: this only gathers them (and fits the refinement plan, here, on
    # this machine's best device: a remote cluster's device name may not exist here).
    here = config.model_copy(update={"device": "auto"}) if dask_address else config
    return train_ensemble(here, load_training_data(config.data))


class TrainRequest(Settings):
    """What the CLI hands the child process: ``train_flow``'s arguments."""

    config_path: str
    overrides: dict[str, Any] = {}
    dask_address: str | None = None
    dask_workers: int | None = None


def main(argv: list[str]) -> int:
    """Entry point of the child process: a ``TrainRequest`` as JSON on standard input (``argv`` empty);
    prints ``ensemble.json``'s content as one line. Ends with the CLI that started it."""
    try:
        request = read_child_request("deconvseg.flows.train", argv, TrainRequest)
        summary = train_flow(request.config_path, request.overrides, request.dask_address, request.dask_workers)
    except DeconvsegError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
