"""Training batches from a ``torch.utils.data.DataLoader``: sampling and augmentation in worker processes.

Batch ``k`` of a member is drawn by ``PatchSampler.batch`` with its own generator,
``numpy.random.default_rng([seed, k])``. A batch therefore depends on the member's seed and the step
only -- not on the number of loader workers, on which worker drew it, nor on whether the run was
resumed -- so a run is reproducible with 0, 1 or N workers, and a resumed run needs no sampler state.

With ``num_workers > 0`` the workers (forked, so the prepared volumes are shared, not copied) draw
batches ahead of the training loop while the network trains; ``pin_memory`` puts them in
page-locked memory for fast, asynchronous copies to a GPU; ``persistent_workers`` keeps the workers
alive across the run's validations instead of starting them again.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from deconvseg.pipeline.config import Settings
from deconvseg.pipeline.patches import PatchSampler


class LoaderConfig(Settings):
    """How batches reach the training loop (``torch.utils.data.DataLoader`` settings)."""

    num_workers: int = 0  # processes drawing batches; 0 draws them in the training process
    pin_memory: bool = True  # page-locked batches (used only when training on a GPU)
    persistent_workers: bool = True
    prefetch_factor: int = 2  # batches each worker draws ahead


def batch_rng(seed: int, step: int) -> np.random.Generator:
    """The generator that draws batch ``step`` of a member seeded with ``seed``."""
    return np.random.default_rng([seed, step])


class PatchBatches(Dataset):
    """Batch ``k`` (``k`` in ``[start, stop)``) of ``sampler``, as tensors: ``image``, ``label`` and,
    for two-scale networks, ``context``.

    Args:
        sampler: the member's patch sampler.
        seed: the member's seed.
        batch_size: patches per batch.
        start: first step (a resumed run starts after its saved step).
        stop: end of the steps (exclusive).
    """

    def __init__(self, sampler: PatchSampler, seed: int, batch_size: int, start: int, stop: int) -> None:
        self.sampler, self.seed, self.batch_size = sampler, seed, batch_size
        self.start, self.stop = start, stop

    def __len__(self) -> int:
        return max(self.stop - self.start, 0)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        batch = self.sampler.batch(batch_rng(self.seed, self.start + index), self.batch_size)
        tensors = {"image": torch.from_numpy(batch.image), "label": torch.from_numpy(batch.label)}
        if batch.context is not None:
            tensors["context"] = torch.from_numpy(np.ascontiguousarray(batch.context, dtype=np.float32))
        return tensors


def batch_loader(batches: PatchBatches, config: LoaderConfig, device: torch.device) -> DataLoader:
    """A loader yielding ``batches`` in step order (one batch per item, no re-collation).

    Pinned memory is asked for only when the batches go to a CUDA device.
    """
    workers = config.num_workers
    return DataLoader(
        batches,
        batch_size=None,
        shuffle=False,
        num_workers=workers,
        pin_memory=config.pin_memory and device.type == "cuda",
        persistent_workers=config.persistent_workers and workers > 0,
        prefetch_factor=config.prefetch_factor if workers > 0 else None,
    )
