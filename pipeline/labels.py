"""The one label table shared by training, phantoms and every exporter.

A structure keeps the same value, name, colour and code everywhere it appears. Colours are
fixed (never random) so that a clinician sees the same colour in every view and every case.
"""

from __future__ import annotations

import functools
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import cast

import numpy as np


@dataclass(frozen=True)
class Code:
    """A coded concept (SNOMED CT by default), as DICOM-SEG and RTSTRUCT need it."""

    value: str
    meaning: str
    scheme: str = "SCT"


@dataclass(frozen=True)
class Label:
    """One structure: its voxel value, name, RGB colour, optional property code and, where the code
    names the organ but not the side (``Kidney`` for ``kidney_left``), a laterality modifier."""

    value: int
    name: str
    color: tuple[int, int, int]
    code: Code | None = None
    modifier: Code | None = None


TISSUE = Code("85756007", "Tissue")  # segmented property category for anatomy


@dataclass(frozen=True)
class LabelTable:
    """An ordered set of labels (background 0 is implicit and never listed)."""

    labels: tuple[Label, ...]

    def __post_init__(self) -> None:
        values = [label.value for label in self.labels]
        if len(set(values)) != len(values) or 0 in values:
            raise ValueError(f"label values must be unique and non-zero, got {values}")

    @property
    def values(self) -> list[int]:
        return [label.value for label in self.labels]

    @property
    def names(self) -> list[str]:
        return [label.name for label in self.labels]

    def __getitem__(self, value: int) -> Label:
        for label in self.labels:
            if label.value == value:
                return label
        raise KeyError(f"no label with value {value}; known values: {self.values}")

    def __iter__(self):
        return iter(self.labels)

    def __len__(self) -> int:
        return len(self.labels)

    def to_json(self) -> list[dict]:
        return [asdict(label) for label in self.labels]

    @classmethod
    def from_json(cls, items: list[dict]) -> LabelTable:
        return cls(
            tuple(
                Label(
                    value=int(item["value"]),
                    name=item["name"],
                    color=tuple(item.get("color") or default_color(int(item["value"]))),
                    code=Code(**item["code"]) if item.get("code") else None,
                    modifier=Code(**item["modifier"]) if item.get("modifier") else None,
                )
                for item in items
            )
        )

    def write(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=2))

    @classmethod
    def read(cls, path: str | Path) -> LabelTable:
        return cls.from_json(json.loads(Path(path).read_text()))


def _srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """CIELAB (D65) of sRGB colours in 0..255, shape ``(n, 3)``."""
    c = rgb / 255.0
    linear = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    xyz = linear @ np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]]).T
    xyz /= np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack([116 * f[:, 1] - 16, 500 * (f[:, 0] - f[:, 1]), 200 * (f[:, 1] - f[:, 2])], axis=1)


def color_difference(a: tuple[int, int, int], b: tuple[int, int, int]) -> float:
    """CIE76 colour difference (Euclidean distance in CIELAB) of two sRGB colours."""
    lab = _srgb_to_lab(np.array([a, b], dtype=float))
    return float(np.linalg.norm(lab[0] - lab[1]))


@functools.lru_cache(maxsize=1)
def palette() -> tuple[tuple[int, int, int], ...]:
    """The fixed palette for labels that bring no colour of their own: 128 colours, each as far
    (CIELAB) from all before it as the sRGB gamut allows (greedy farthest-point order), kept
    between dark and pale and away from greys so they show on a CT window.

    Deterministic (no random numbers): the same value gets the same colour in every run. The
    first 117 colours (TotalSegmentator's ``total`` classes) differ by at least 16 CIE76 units
    pairwise, so no two structures that touch share a colour.
    """
    levels = np.arange(0, 256, 15, dtype=float)
    grid = np.stack(np.meshgrid(levels, levels, levels, indexing="ij"), axis=-1).reshape(-1, 3)
    lab = _srgb_to_lab(grid)
    chroma = np.hypot(lab[:, 1], lab[:, 2])
    keep = (lab[:, 0] >= 35) & (lab[:, 0] <= 88) & (chroma >= 20)
    grid, lab = grid[keep], lab[keep]
    chosen = [
        int(np.argmin(np.linalg.norm(grid - np.array([216.0, 101.0, 79.0]), axis=1)))
    ]  # Slicer's tissue red first
    distance = np.linalg.norm(lab - lab[chosen[0]], axis=1)
    while len(chosen) < PALETTE_SIZE:
        pick = int(np.argmax(distance))
        chosen.append(pick)
        distance = np.minimum(distance, np.linalg.norm(lab - lab[pick], axis=1))
    return tuple(cast(tuple[int, int, int], tuple(int(v) for v in grid[i])) for i in chosen)  # rows of 3 channels


PALETTE_SIZE = 128


def default_color(value: int) -> tuple[int, int, int]:
    """The fixed colour of a label value that has none of its own (``palette()``; repeats after 128)."""
    colors = palette()
    return colors[(value - 1) % len(colors)]


def generic_table(values: list[int]) -> LabelTable:
    """A table for a label map of unknown meaning: ``label_<v>`` with fixed colours."""
    return LabelTable(tuple(Label(v, f"label_{v}", default_color(v)) for v in sorted(set(values)) if v != 0))


ACDC = LabelTable(
    (
        Label(1, "right_ventricle", (0, 151, 206), Code("53085002", "Right ventricular structure")),
        Label(2, "myocardium", (216, 101, 79), Code("74281007", "Myocardium structure")),
        Label(3, "left_ventricle", (241, 214, 145), Code("87878005", "Left ventricular structure")),
    )
)
