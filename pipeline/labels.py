"""The one label table shared by training, phantoms and every exporter.

A structure keeps the same value, name, colour and code everywhere it appears. Colours are
fixed (never random) so that a clinician sees the same colour in every view and every case.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class Code:
    """A coded concept (SNOMED CT by default), as DICOM-SEG and RTSTRUCT need it."""

    value: str
    meaning: str
    scheme: str = "SCT"


@dataclass(frozen=True)
class Label:
    """One structure: its voxel value, name, RGB colour and optional property code."""

    value: int
    name: str
    color: tuple[int, int, int]
    code: Code | None = None


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
    def from_json(cls, items: list[dict]) -> "LabelTable":
        return cls(
            tuple(
                Label(
                    value=int(item["value"]),
                    name=item["name"],
                    color=tuple(item.get("color") or default_color(int(item["value"]))),
                    code=Code(**item["code"]) if item.get("code") else None,
                )
                for item in items
            )
        )

    def write(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=2))

    @classmethod
    def read(cls, path: str | Path) -> "LabelTable":
        return cls.from_json(json.loads(Path(path).read_text()))


# A fixed palette (Slicer-like) for labels that bring no colour of their own.
_PALETTE = [
    (216, 101, 79), (128, 174, 128), (241, 214, 145), (177, 122, 101), (111, 184, 210),
    (221, 130, 101), (144, 238, 144), (192, 104, 88), (220, 245, 20), (78, 63, 0),
    (255, 250, 220), (230, 220, 70), (200, 200, 235), (250, 250, 210), (244, 214, 49),
    (0, 151, 206), (216, 101, 79), (183, 156, 220), (183, 214, 211), (152, 189, 207),
]


def default_color(value: int) -> tuple[int, int, int]:
    """The fixed colour of a label value that has none of its own."""
    return _PALETTE[(value - 1) % len(_PALETTE)]


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
