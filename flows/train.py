"""Training as a Prefect flow (one task per member) and as the plain call the CLI makes.

``run_training`` is what ``deconvseg train`` runs: validate the YAML, prepare the data once,
train the members in order with a rich progress bar (loss, validation Dice), write
``ensemble.json``. ``train_flow`` runs the same steps as Prefect tasks, for scheduled runs.
"""

from __future__ import annotations

from contextlib import contextmanager
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prefect import flow, task

from deconvseg.pipeline.config import load_config
from deconvseg.pipeline.training.trainer import Callback, MemberConfig, TrainConfig, TrainEvent, ensure_member, train_ensemble
from deconvseg.pipeline.training.data import TrainingData, load_training_data


@contextmanager
def progress_callback(config: TrainConfig) -> Iterator[Callback]:
    """A rich progress bar per member showing step, loss, latest and best validation Dice."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    columns = (
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"), TextColumn("val Dice {task.fields[dice]} (best {task.fields[best]})"),
        TimeElapsedColumn(), TimeRemainingColumn(),
    )
    with Progress(*columns) as bar:
        tasks: dict[str, Any] = {}

        def update(event: TrainEvent) -> None:
            if event.member not in tasks:
                tasks[event.member] = bar.add_task(event.member, total=event.total, loss="-", dice="-", best="-")
            fields = {"loss": f"{event.loss:.3f}"}
            if event.validated:
                fields.update(dice=f"{event.val_dice:.4f}", best=f"{event.best_dice:.4f}")
            bar.update(tasks[event.member], completed=event.step, **fields)

        yield update


def run_training(
    config_path: str | Path, overrides: dict[str, Any] | None = None, progress: bool = True, only: list[str] | None = None
) -> dict[str, Any]:
    """Train the ensemble of a YAML config (or only some members); returns ``ensemble.json``'s content."""
    config = load_config(config_path, TrainConfig, overrides)
    data = load_training_data(config.data)
    if not progress:
        return train_ensemble(config, data, only=only)
    with progress_callback(config) as callback:
        return train_ensemble(config, data, callback, only=only)


@task
def prepare_data(config: TrainConfig) -> TrainingData:
    """Prefect task: ``deconvseg.pipeline.training.data.load_training_data``."""
    return load_training_data(config.data)


@task
def train_one(config: TrainConfig, member: MemberConfig, data: TrainingData) -> dict[str, Any]:
    """Prefect task: ``deconvseg.pipeline.training.trainer.ensure_member`` (train or resume ``config.out/<member>``)."""
    return ensure_member(config, member, data)


@flow(name="train")
def train_flow(config_path: str, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Prepare the data, train each member as its own task, then write ``ensemble.json``."""
    config = load_config(config_path, TrainConfig, overrides)
    import torch

    torch.set_num_threads(config.threads)
    data = prepare_data(config)
    for member in config.members:
        train_one(config, member, data)
    # Every member is finished now, so this only gathers their metrics into ensemble.json.
    return train_ensemble(config, data)
