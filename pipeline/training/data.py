"""Training and validation data: read a dataset, fit the normalisation, bring it to the working grid.

Two sources: ACDC (``deconvseg.pipeline.io.datasets.read_acdc`` with a train and a val split list) and
synthetic phantoms (``deconvseg.pipeline.phantoms.make_phantom``, seeds ``seed .. seed + n_train - 1`` for
training and the next ``n_val`` for validation).

ACDC's SSL4MIS files are min-max scaled per volume, ``x' = (x - min) / (max - min)``, and carry no
spacing. The MR normalisation is a per-image z-score, ``(x' - mean(x')) / std(x')``, which is
invariant to any positive affine map ``x' = a x + b`` -- so it gives the same network input as the
raw scanner values would, and the lost scaling does not matter. Spacing is the nominal one of
``read_acdc`` (1.5625 x 1.5625 x 10 mm); the working grid is a multiple of it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np

from deconvseg.pipeline.config import Settings
from deconvseg.pipeline.errors import InputError
from deconvseg.pipeline.io.datasets import Case, read_acdc
from deconvseg.pipeline.labels import ACDC, LabelTable
from deconvseg.pipeline.normalize import fit_normalization, normalize
from deconvseg.pipeline.phantoms import PHANTOM_LABELS, make_phantom
from deconvseg.pipeline.resample import resample_to_spacing


class PhantomData(Settings):
    """Synthetic phantoms drawn with consecutive seeds."""

    modality: Literal["CT", "MR"] = "CT"
    n_train: int = 8
    n_val: int = 2
    shape: tuple[int, int, int] = (48, 96, 96)  # (z, y, x)
    spacing: tuple[float, float, float] = (3.0, 3.0, 4.0)  # (x, y, z) mm
    seed: int = 0


class DataConfig(Settings):
    """Where the training data comes from and how it is prepared."""

    kind: Literal["acdc", "phantom"] = "phantom"
    root: Path | None = None  # ACDC: folder holding volumes/ and splits/
    train_split: str = "splits/train.list"  # relative to root, or absolute
    val_split: str = "splits/val.list"
    phantom: PhantomData = PhantomData()
    spacing: tuple[float, float, float] | None = None  # working spacing (x, y, z) mm; None keeps the data's
    normalization: Literal["auto", "ct", "mr_zscore", "nyul"] = "auto"


@dataclass(frozen=True)
class Prepared:
    """One case on the working grid, normalised, plus its original for evaluation."""

    case_id: str
    image: np.ndarray  # float32 (z, y, x), normalised, working grid
    label: np.ndarray  # uint8 (z, y, x), working grid
    original: Case


@dataclass(frozen=True)
class TrainingData:
    """Everything a training run needs besides the network."""

    train: list[Prepared]
    val: list[Prepared]
    labels: LabelTable
    spacing: tuple[float, float, float]
    normalization: dict[str, Any]
    description: dict[str, Any]

    def at_spacing(self, spacing: tuple[float, float, float] | None) -> TrainingData:
        """The same cases and normalisation on another working grid (a member with its own spacing)."""
        if spacing is None or np.allclose(spacing, self.spacing):
            return self
        return replace(
            self,
            train=[prepare_case(c.original, self.normalization, spacing) for c in self.train],
            val=[prepare_case(c.original, self.normalization, spacing) for c in self.val],
            spacing=spacing,
        )


def read_cases(config: DataConfig) -> tuple[list[Case], list[Case], LabelTable, dict[str, Any]]:
    """The raw train and val cases, their label table and a description for ``model.json``.

    Raises:
        InputError: when ACDC is asked for without a ``root``, or a split is missing.
    """
    if config.kind == "acdc":
        if config.root is None:
            raise InputError("data.root", "ACDC needs the folder that holds volumes/", "set data.root in the config")
        root = Path(config.root)
        train = read_acdc(root, _split_path(root, config.train_split))
        val = read_acdc(root, _split_path(root, config.val_split))
        desc: dict[str, Any] = {
            "dataset": "ACDC (SSL4MIS HDF5)",
            "train_split": config.train_split,
            "val_split": config.val_split,
        }
        return train, val, ACDC, desc
    p = config.phantom
    seeds = list(range(p.seed, p.seed + p.n_train + p.n_val))
    cases = []
    for seed in seeds:
        image, label = make_phantom(p.modality, shape=p.shape, spacing=p.spacing, seed=seed)
        cases.append(Case(f"phantom_{p.modality.lower()}_{seed:03d}", image, label))
    desc = {
        "dataset": f"deconvseg.pipeline.phantoms {p.modality}",
        "train_seeds": seeds[: p.n_train],
        "val_seeds": seeds[p.n_train :],
    }
    return cases[: p.n_train], cases[p.n_train :], PHANTOM_LABELS, desc


def _split_path(root: Path, split: str) -> Path:
    path = Path(split)
    return path if path.is_absolute() else root / path


def prepare_case(case: Case, spec: dict[str, Any], spacing: tuple[float, float, float] | None) -> Prepared:
    """Normalise ``case`` with ``spec`` and resample image and label to ``spacing`` (if given)."""
    if case.label is None:
        raise InputError(
            case.case_id, "training case has no label map", "use labelled cases for training and validation"
        )
    image, label = normalize(case.image, spec), case.label
    if spacing is not None and not np.allclose(image.spacing, spacing):
        image, label = resample_to_spacing(image, spacing), resample_to_spacing(label, spacing)
    return Prepared(case.case_id, image.array.astype(np.float32), label.array.astype(np.uint8), case)


def load_training_data(config: DataConfig) -> TrainingData:
    """Read the cases, fit the normalisation on the training images, prepare every case."""
    train, val, labels, desc = read_cases(config)
    spec = fit_normalization(config.normalization, [c.image for c in train], [c.label for c in train])
    spacing = cast(tuple[float, float, float], tuple(config.spacing)) if config.spacing else train[0].image.spacing
    return TrainingData(
        train=[prepare_case(c, spec, spacing) for c in train],
        val=[prepare_case(c, spec, spacing) for c in val],
        labels=labels,
        spacing=spacing,
        normalization=spec,
        description=desc,
    )
