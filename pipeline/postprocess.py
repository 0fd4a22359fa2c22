"""Shape-aware refinement of label maps, each step kept per class only where validation says so.

Steps act on one class ``c`` of a label map and only ever move voxels between ``c`` and
background: voxels that leave ``c`` become 0, and a step may claim only background voxels, so
no step overwrites another structure. Thresholds are physical (mL, mm) and use the spacing.

- ``largest_component``: keep the largest 26-connected component of ``c`` (cc3d).
- ``remove_islands``: drop components of ``c`` smaller than ``min_ml`` millilitres.
- ``fill_holes``: fill enclosed background cavities of ``c`` (3D).
- ``smooth``: Gaussian-smooth the mask of ``c`` with ``sigma_mm`` and threshold at 1/2.
- ``enclosed_by``: drop voxels of ``c`` outside the filled ``outer`` class, slice by slice along
  ``axis`` (0 = z) or in 3D (``axis`` = -1): e.g. the LV cavity lies inside the myocardium.
- ``prior``: ``c``'s mask from a callable ``labels -> labels`` given by name at apply time
  (e.g. the projection through a shape autoencoder).

``choose_steps`` follows nnU-Net's rule (Isensee et al. 2021): try each candidate on the
validation predictions and keep it for a class only if no class's mean Dice goes down.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, cast

import cc3d
import numpy as np
from scipy import ndimage

from deconvseg.pipeline.config import Settings

log = logging.getLogger(__name__)

Spacing = tuple[float, float, float]
Prior = Callable[[np.ndarray], np.ndarray]
StepName = Literal["largest_component", "remove_islands", "fill_holes", "smooth", "enclosed_by", "prior"]


class Step(Settings):
    """One refinement step; ``label`` None in a candidate means "try it for every class"."""

    step: StepName
    label: int | None = None
    params: dict[str, float | int | str] = {}


def _bbox(mask: np.ndarray, pad: Sequence[int]) -> tuple[slice, ...]:
    box = []
    for axis, margin in enumerate(pad):
        hit = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))
        box.append(slice(max(hit[0] - margin, 0), hit[-1] + margin + 1))
    return tuple(box)


def _step_mask(labels: np.ndarray, step: Step, spacing: Spacing, priors: Mapping[str, Prior]) -> np.ndarray:
    """The new mask of ``step.label`` (may include voxels of other classes; the caller filters)."""
    mask = labels == step.label
    p = step.params
    if not mask.any():
        return mask
    if step.step == "largest_component":
        return cc3d.largest_k(mask, k=1, connectivity=26) > 0
    if step.step == "remove_islands":
        voxels = float(p["min_ml"]) * 1000.0 / float(np.prod(spacing))
        return cc3d.dust(mask, threshold=int(np.ceil(voxels)), connectivity=26, in_place=False)
    if step.step == "fill_holes":
        box = _bbox(mask, (1, 1, 1))
        out = mask.copy()
        out[box] = ndimage.binary_fill_holes(mask[box])
        return out
    if step.step == "smooth":
        sigma = [float(p["sigma_mm"]) / s for s in reversed(spacing)]
        box = _bbox(mask, [int(np.ceil(3 * s)) + 1 for s in sigma])
        out = np.zeros_like(mask)
        out[box] = ndimage.gaussian_filter(mask[box].astype(np.float32), sigma) > 0.5
        return out
    if step.step == "enclosed_by":
        outer = labels == int(p["outer"])
        axis = int(p.get("axis", 0))
        if axis < 0:
            inside = ndimage.binary_fill_holes(outer)
        else:
            inside = np.stack([ndimage.binary_fill_holes(s) for s in np.moveaxis(outer, axis, 0)], axis=axis)
        return mask & inside
    if step.step == "prior":
        name = str(p["name"])
        if name not in priors:
            raise KeyError(f"refinement plan uses the shape prior {name!r}, but only {sorted(priors)} were given")
        return np.asarray(priors[name](labels)) == step.label
    raise ValueError(f"unknown refinement step {step.step!r}")


def apply_step(
    labels: np.ndarray, step: Step, spacing: Spacing, priors: Mapping[str, Prior] | None = None
) -> np.ndarray:
    """A new label map with ``step`` applied to class ``step.label`` (``labels`` is not modified)."""
    new = _step_mask(labels, step, spacing, priors or {})
    old = labels == step.label
    out = labels.copy()
    out[old & ~new] = 0
    out[new & ~old & (labels == 0)] = step.label
    return out


def apply_plan(
    labels: np.ndarray, plan: Mapping[str, Any] | None, spacing: Spacing, priors: Mapping[str, Prior] | None = None
) -> np.ndarray:
    """Apply the accepted steps of a plan from ``choose_steps`` in order (``None``: unchanged copy).

    Args:
        labels: label map ``(z, y, x)``.
        plan: ``{"steps": [{"step", "label", "params"}, ...]}`` as stored in ``model.json``.
        spacing: voxel size ``(x, y, z)`` in mm.
        priors: callables for ``prior`` steps, by name.
    """
    out = labels.copy()
    for item in (plan or {}).get("steps", []):
        step = Step.model_validate({key: item[key] for key in ("step", "label", "params") if key in item})
        out = apply_step(out, step, spacing, priors)
    return out


def dice_per_class(
    predictions: Sequence[np.ndarray], references: Sequence[np.ndarray], classes: Sequence[int]
) -> dict[int, float]:
    """Mean Dice per class over cases, skipping cases where the class is absent from both maps."""
    out = {}
    for c in classes:
        values = []
        for pred, ref in zip(predictions, references):
            a, b = pred == c, ref == c
            total = int(a.sum()) + int(b.sum())
            if total:
                values.append(2.0 * int((a & b).sum()) / total)
        out[c] = float(np.mean(values)) if values else 1.0
    return out


def choose_steps(
    predictions: Sequence[np.ndarray],
    references: Sequence[np.ndarray],
    spacing: Spacing | Sequence[Spacing],
    candidates: Sequence[Step | Mapping[str, Any]],
    classes: Sequence[int] | None = None,
    priors: Mapping[str, Prior] | None = None,
) -> dict[str, Any]:
    """Greedy per-class selection of refinement steps on validation cases.

    Candidates are tried in order, each for its class (or every class); a step is accepted when it
    changes the predictions and lowers no class's mean Dice, and later steps see its result.

    Args:
        predictions: validation label maps (one per case).
        references: their ground truth.
        spacing: one ``(x, y, z)`` spacing for all cases or one per case.
        candidates: steps to try (``Step`` or plain dicts).
        classes: foreground classes; default every non-zero value in the references.
        priors: callables for ``prior`` steps, by name.

    Returns:
        ``{"steps": [...accepted, with dice_before/dice_after...], "rejected": [...], "dice": {class: dice}}``,
        JSON-able, for ``model.json``/``ensemble.json`` ``postprocess``.
    """
    spacings: list[Spacing] = (
        [cast(Spacing, tuple(spacing))] * len(predictions)
        if np.ndim(spacing) == 1
        else [cast(Spacing, tuple(s)) for s in cast(Sequence[Spacing], spacing)]
    )
    if classes is None:
        classes = sorted({int(v) for ref in references for v in np.unique(ref) if v != 0})
    current = [np.asarray(p) for p in predictions]
    dice = dice_per_class(current, references, classes)
    accepted, rejected = [], []
    for candidate in candidates:
        candidate = candidate if isinstance(candidate, Step) else Step.model_validate(candidate)
        for c in [candidate.label] if candidate.label is not None else classes:
            step = candidate.model_copy(update={"label": c})
            trial = [apply_step(p, step, s, priors) for p, s in zip(current, spacings)]
            if all(np.array_equal(t, p) for t, p in zip(trial, current)):
                continue
            new = dice_per_class(trial, references, classes)
            record = {**step.model_dump(), "dice_before": dice[c], "dice_after": new[c]}
            if all(new[k] >= dice[k] - 1e-12 for k in classes):
                accepted.append(record)
                current, dice = trial, new
            else:
                rejected.append(record)
            log.info(
                "refinement %s for class %d: Dice %.4f -> %.4f (%s)",
                step.step,
                c,
                record["dice_before"],
                record["dice_after"],
                "kept" if record in accepted else "rejected",
            )
    return {"steps": accepted, "rejected": rejected, "dice": {str(k): v for k, v in dice.items()}}
