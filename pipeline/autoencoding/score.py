"""The shape guard's plausibility score: reconstruction Dice, discounted by volume that looks wrong.

The reconstruction Dice of a plausible map is limited by the autoencoder's own error, a thin band
along the boundaries (mean Dice about 0.85 on ACDC val), so a hole or an island of a few mL barely
moves it. Five terms, each a volume in mL measured on the segmentation ``S`` alone (the
reference is never needed), catch what the Dice misses:

- stray volume ``V_s``: the voxels of each structure outside its largest 26-connected component
  (islands; an anatomical structure is one piece);
- enclosed background ``V_h``: background voxels that the foreground encloses in their slice,
  ``fill_holes(S > 0) & (S == 0)`` per slice (holes);
- exposed wall ``V_w``: the voxels of a walled structure (one that the anatomy encloses in every
  slice, e.g. the LV blood pool inside the myocardium) with an in-plane 4-neighbour of
  background (holes cut through the wall);
- concavity ``V_c``: the largest 6-connected component of the foreground's per-slice convex
  deficiency, ``hull(S > 0) & (S == 0)``, after an in-plane opening ``concavity_width_mm`` wide
  (a short-axis section of the heart is nearly convex; dents cut into its outline are not);
- disagreement blob ``V_d``: the largest 6-connected component, over structures ``c``, of
  ``open((S == c & p_c < 1 - t) | (S != c & p_c > t))``, where ``p_c`` is the autoencoder's
  probability of ``c`` and ``open`` a one-voxel in-plane opening (3 x 3): the band of boundary
  disagreement is thinner than the opening and vanishes, a missing or extra chunk does not.

With ``d`` the mean per-structure reconstruction Dice,

    plausibility(S) = d * exp(-(V_s + V_h + u * V_w + k * V_c + w * V_d) / v0),

``v0``, ``u``, ``k`` and ``w`` chosen on the ACDC training labels. The topology terms follow the
anatomical criteria (connectivity, holes, LV touching the background, concavity) of Painchaud et al.,
"Cardiac Segmentation with Strong Anatomical Guarantees", IEEE TMI 2020; the autoencoder term
is Post-DAE's (Larrazabal et al., IEEE TMI 2020).
"""

from __future__ import annotations

from dataclasses import dataclass

import cc3d
import numpy as np
from scipy import ndimage
from skimage.morphology import convex_hull_image

from deconvseg.pipeline.config import Settings

IN_PLANE = np.ones((1, 3, 3), dtype=bool)
Spacing = tuple[float, float, float]


class PlausibilityConfig(Settings):
    """How the plausibility terms are combined (see the module docstring), and how ``refine`` uses them.

    Attributes:
        confidence: ``t``, the autoencoder probability beyond which a disagreement counts.
        volume_scale_ml: ``v0``; the score falls by a factor e per ``v0`` mL of suspect volume.
        walled_classes: structures that must not touch the background within a slice.
        wall_weight: ``u``, the weight of their exposed voxels (a one-voxel layer) in the suspect volume.
        concavity_width_mm: width of the in-plane square opening applied to the convex deficiency
            (the nearest odd number of voxels; 7 at ACDC's 1.5625 mm).
        concavity_weight: ``k``, the weight of the concavity volume.
        disagreement_weight: ``w``, the weight of the disagreement blob against the topology terms.
        replace_below: ``ShapeGuard.refine`` replaces a structure whole when its reconstruction
            Dice is below this (the autoencoder disagrees with all of it, e.g. swapped classes;
            on the ACDC training labels no expert structure scores below 0.35, 99 % of swapped ones do),
            and only its blobs of confident disagreement otherwise.
        flag_below: QA threshold, a map scoring below it is flagged (the 5th percentile of
            reference maps where measured; ``None`` = never flag).
    """

    confidence: float = 0.95
    volume_scale_ml: float = 10.0
    walled_classes: tuple[int, ...] = ()
    wall_weight: float = 10.0
    concavity_width_mm: float = 11.0
    concavity_weight: float = 0.5
    disagreement_weight: float = 0.02
    replace_below: float = 0.35
    flag_below: float | None = None


@dataclass(frozen=True)
class Plausibility:
    """The terms of one map's plausibility (volumes in mL).

    Attributes:
        dice: reconstruction Dice per structure.
        stray_ml: volume outside each structure's largest component, per structure.
        enclosed_background_ml: background enclosed by the foreground within slices.
        exposed_wall_ml: voxels of the walled structures that touch the background in-plane.
        concavity_ml: largest dent in the foreground's outline (opened convex deficiency).
        disagreement_ml: largest confident disagreement blob, per structure.
        score: ``mean(dice) * exp(-(sum(stray) + enclosed + u * exposed + k * concavity
            + w * max(disagreement)) / v0)``.
        flagged: ``score`` is below the configured ``flag_below``.
    """

    dice: dict[int, float]
    stray_ml: dict[int, float]
    enclosed_background_ml: float
    exposed_wall_ml: float
    concavity_ml: float
    disagreement_ml: dict[int, float]
    score: float
    flagged: bool


def voxel_ml(spacing: Spacing) -> float:
    """Volume of one voxel in mL for a spacing in mm."""
    return float(np.prod(spacing)) / 1000.0


def stray_voxels(mask: np.ndarray) -> int:
    """Voxels of ``mask`` outside its largest 26-connected component."""
    if not mask.any():
        return 0
    sizes = np.bincount(cc3d.connected_components(mask, connectivity=26).ravel())[1:]
    return int(sizes.sum() - sizes.max())


def enclosed_background_voxels(labels: np.ndarray) -> int:
    """Background voxels enclosed by the foreground within their slice (axis 0)."""
    foreground = labels > 0
    filled = np.stack([ndimage.binary_fill_holes(s) for s in foreground])
    return int((filled & ~foreground).sum())


def confident_disagreement(mask: np.ndarray, probability: np.ndarray, confidence: float) -> np.ndarray:
    """``open((mask & p < 1 - t) | (~mask & p > t))``: where the autoencoder confidently disagrees with
    ``mask``, without the bands thinner than a one-voxel in-plane opening."""
    disagree = (mask & (probability < 1.0 - confidence)) | (~mask & (probability > confidence))
    return ndimage.binary_opening(disagree, IN_PLANE)


def exposed_voxels(labels: np.ndarray, classes: tuple[int, ...]) -> int:
    """Voxels of ``classes`` with an in-plane 4-neighbour of background (0 when ``classes`` is empty)."""
    if not classes:
        return 0
    background = np.pad(labels == 0, ((0, 0), (1, 1), (1, 1)), constant_values=True)
    touches = background[:, :-2, 1:-1] | background[:, 2:, 1:-1] | background[:, 1:-1, :-2] | background[:, 1:-1, 2:]
    return int((np.isin(labels, classes) & touches).sum())


def convex_deficiency(labels: np.ndarray) -> np.ndarray:
    """Per slice (axis 0), the background inside the convex hull of the foreground."""
    out = np.zeros(labels.shape, dtype=bool)
    for z, foreground in enumerate(labels > 0):
        if foreground.sum() >= 3:
            out[z] = convex_hull_image(foreground) & ~foreground
    return out


def largest_component_voxels(mask: np.ndarray) -> int:
    """Voxels of the largest 6-connected component of ``mask`` (0 when empty)."""
    if not mask.any():
        return 0
    return int(np.bincount(cc3d.connected_components(mask, connectivity=6).ravel())[1:].max())


def _foreground_box(mask: np.ndarray) -> tuple[slice, ...]:
    """Bounding box of ``mask`` grown by one voxel (the whole array when ``mask`` is empty)."""
    if not mask.any():
        return tuple(slice(0, n) for n in mask.shape)
    idx = np.argwhere(mask)
    return tuple(slice(max(lo - 1, 0), hi + 2) for lo, hi in zip(idx.min(axis=0), idx.max(axis=0)))


def plausibility(
    labels: np.ndarray, probabilities: np.ndarray, spacing: Spacing, config: PlausibilityConfig
) -> Plausibility:
    """All terms and the score of a label map given its reconstruction probabilities.

    Args:
        labels: label map ``[z, y, x]`` with values ``0..C-1``.
        probabilities: the autoencoder's class probabilities ``[C, z, y, x]`` on the same grid.
        spacing: voxel size ``(x, y, z)`` in mm.
        config: confidence, volume scale, weight and flag threshold.

    Returns:
        The terms; an empty map scores 0.0 (flagged when a threshold is set).
    """
    ml = voxel_ml(spacing)
    box = _foreground_box((labels > 0) | (probabilities[0] < 0.5))  # outside, both say background
    labels, probabilities = labels[box], probabilities[(slice(None), *box)]
    recon = probabilities.argmax(0)
    classes = range(1, probabilities.shape[0])
    dice, stray, blob = {}, {}, {}
    for c in classes:
        seg, rec = labels == c, recon == c
        total = int(seg.sum()) + int(rec.sum())
        dice[c] = 1.0 if total == 0 else 2.0 * float((seg & rec).sum()) / total
        stray[c] = stray_voxels(seg) * ml
        blob[c] = largest_component_voxels(confident_disagreement(seg, probabilities[c], config.confidence)) * ml
    enclosed = enclosed_background_voxels(labels) * ml
    exposed = exposed_voxels(labels, config.walled_classes) * ml
    width = max(2 * round((config.concavity_width_mm / min(spacing[:2]) - 1.0) / 2.0) + 1, 1)  # nearest odd
    dents = ndimage.binary_opening(convex_deficiency(labels), np.ones((1, width, width), dtype=bool))
    concave = largest_component_voxels(dents) * ml
    terms = (dice, stray, enclosed, exposed, concave, blob)
    score = combine(*terms, config) if np.any(labels) else 0.0
    flagged = config.flag_below is not None and score < config.flag_below
    return Plausibility(*terms, score, flagged)


def combine(
    dice: dict[int, float],
    stray_ml: dict[int, float],
    enclosed_ml: float,
    exposed_ml: float,
    concavity_ml: float,
    disagreement_ml: dict[int, float],
    config: PlausibilityConfig,
) -> float:
    """``mean(dice) * exp(-(sum(stray) + enclosed + u * exposed + k * concavity + w * max(disagreement)) / v0)``."""
    suspect = (
        sum(stray_ml.values())
        + enclosed_ml
        + config.wall_weight * exposed_ml
        + config.concavity_weight * concavity_ml
        + config.disagreement_weight * max(disagreement_ml.values())
    )
    return float(np.mean(list(dice.values())) * np.exp(-suspect / config.volume_scale_ml))
