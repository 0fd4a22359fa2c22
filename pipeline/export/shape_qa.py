"""The shape guard's plausibility score as a QA entry of the review bundle (``qa.json``).

The score (``deconvseg.pipeline.autoencoding.score``) judges the whole map. When it flags the map, the flag
``implausible_shape`` also goes on each structure the score blames:

- one the autoencoder rejects whole (reconstruction Dice below ``replace_below``: swapped classes);
- one whose wrong volume ``e_c = V_s,c + V_d,c`` (stray components plus its confident-disagreement
  blob, the two terms that belong to one structure) is at least ``v0 / 2`` and at least half the
  largest ``e_c``: an island or a missing chunk of that structure. Good ACDC predictions have
  blobs of 1-2 mL (patient085_frame02: 1.7 mL), ``v0 / 2`` is 5 mL.

Holes and dents seen only in the enclosed-background, exposed-wall or concavity terms belong to
no single structure: then the map alone is flagged.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deconvseg.pipeline.files import atomic_file
from deconvseg.pipeline.labels import LabelTable

if TYPE_CHECKING:
    from deconvseg.pipeline.autoencoding.assessment import ShapeAssessment

FLAG = "implausible_shape"


def blamed(shape: ShapeAssessment) -> list[int]:
    """Label values the score blames when it flags the map (``[]`` when not flagged); see the module docstring."""
    p = shape.plausibility
    if not p.flagged:
        return []
    wrong = {v: p.stray_ml[v] + p.disagreement_ml[v] for v in p.dice}
    floor = 0.5 * max(shape.config.volume_scale_ml, max(wrong.values(), default=0.0))
    return sorted(v for v in p.dice if p.dice[v] < shape.config.replace_below or wrong[v] >= floor)


def shape_entry(shape: ShapeAssessment, table: LabelTable) -> dict[str, Any]:
    """The ``shape`` entry of ``qa.json``: score, threshold, flag, blamed structures and every term (mL)."""
    p = shape.plausibility
    names = {label.value: label.name for label in table}

    def by_name(values: dict[int, float]) -> dict[str, float]:
        return {names.get(v, str(v)): round(float(x), 4) for v, x in values.items()}

    return {
        "guard": shape.guard,
        "score": round(p.score, 4),
        "threshold": shape.config.flag_below,
        "flagged": p.flagged,
        "blamed": [names.get(v, str(v)) for v in blamed(shape)],
        "terms": {
            "dice": by_name(p.dice),
            "stray_ml": by_name(p.stray_ml),
            "enclosed_background_ml": round(p.enclosed_background_ml, 4),
            "exposed_wall_ml": round(p.exposed_wall_ml, 4),
            "concavity_ml": round(p.concavity_ml, 4),
            "disagreement_ml": by_name(p.disagreement_ml),
        },
    }


def flag_structures(rows: list[dict[str, Any]], shape: ShapeAssessment) -> None:
    """Add ``implausible_shape`` to the flags of the stats rows the score blames (in place)."""
    values = set(blamed(shape))
    for row in rows:
        if row["value"] in values and FLAG not in row["flags"]:
            row["flags"].append(FLAG)


def write_qa(path: str | Path, entries: dict[str, Any]) -> Path:
    """Write ``qa.json`` (bundle-level QA entries, e.g. ``{"shape": shape_entry(...)}``) atomically."""
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(entries, indent=2))
    return Path(path)
