"""Fuse the outputs of several networks and say how uncertain the result is. Pure functions.

Arrays are in channel space: ``probabilities`` is ``(M, C, *spatial)`` for M members and C classes
(channel 0 = background), label maps hold channel indices ``0..C-1``.

Rules:
- mean: ``p_c = (1/M) sum_m p_mc``.
- weighted mean: ``p_c = sum_m w_mc p_mc / sum_m w_mc`` with ``w_mc`` the member's validation
  Dice for class c (``model.json`` ``metrics``), renormalised over classes.
- majority vote: ``p_c = (1/M) #{m : argmax_k p_mk = c}`` (ties go to the lower class index).
- STAPLE (Warfield et al., IEEE TMI 2004; multi-label form of Rohlfing et al. 2004 as in
  SimpleITK's ``MultiLabelSTAPLEImageFilter``): estimate each member's confusion matrix
  ``theta_m[d, c] = P(member says d | truth c)`` by EM; the voxel posterior is
  ``p_c ∝ prior_c prod_m theta_m[d_m, c]``.

Uncertainty: normalised entropy ``H(p) / log C`` of the fused probabilities and member
disagreement ``#{m : label_m != fused} / M``; the voxel score is the larger of the two, so it is 0
exactly where every member is certain of the same class.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import SimpleITK as sitk

Rule = Literal["mean", "weighted_mean", "majority", "staple"]
RULES: tuple[str, ...] = ("mean", "weighted_mean", "majority", "staple")


def mean_fusion(probabilities: np.ndarray) -> np.ndarray:
    """Average over members: ``(M, C, ...) -> (C, ...)`` float32."""
    return probabilities.mean(axis=0, dtype=np.float32)


def member_shares(weights: np.ndarray, members: int, classes: int) -> np.ndarray:
    """``(M, C)`` float32 weights from ``(M,)`` or ``(M, C)`` ones, normalised to sum to 1 over the members.

    Raises:
        ValueError: for negative weights or a class whose weights are all zero.
    """
    w = np.asarray(weights, dtype=np.float32)
    w = np.broadcast_to(w[:, None] if w.ndim == 1 else w, (members, classes))
    if (w < 0).any() or (w.sum(axis=0) <= 0).any():
        raise ValueError(f"fusion weights must be non-negative with a positive sum per class, got {w.tolist()}")
    return w / w.sum(axis=0, keepdims=True)


def weighted_mean_fusion(probabilities: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Per-class weighted average over members, renormalised to sum to 1 over classes.

    Args:
        probabilities: ``(M, C, ...)``.
        weights: ``(M,)`` or ``(M, C)`` non-negative weights (e.g. from ``dice_weights``).

    Raises:
        ValueError: for negative weights or a class whose weights are all zero.
    """
    w = member_shares(weights, *probabilities.shape[:2])
    shape = w.shape + (1,) * (probabilities.ndim - 2)
    fused = np.einsum("mc...,mc...->c...", probabilities, w.reshape(shape).astype(np.float32))
    return (fused / np.maximum(fused.sum(axis=0, keepdims=True), np.float32(1e-12))).astype(np.float32)


def majority_vote(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Vote fractions ``(C, ...)`` of member label maps ``(M, ...)`` (channel indices)."""
    votes = np.stack([(labels == c).sum(axis=0) for c in range(num_classes)])
    return (votes / np.float32(labels.shape[0])).astype(np.float32)


def staple(labels: np.ndarray, num_classes: int, eps: float = 1e-6) -> np.ndarray:
    """Multi-label STAPLE posterior ``(C, ...)`` from member label maps ``(M, ...)``.

    SimpleITK estimates each member's confusion matrix (priors = label frequencies over all
    members, its default); the posterior is then evaluated per voxel in log space.
    """
    images = [sitk.GetImageFromArray(np.ascontiguousarray(m.reshape(-1, 1, 1), dtype=np.uint8)) for m in labels]
    fit = sitk.MultiLabelSTAPLEImageFilter()
    fit.Execute(images)
    counts = np.bincount(labels.ravel().astype(np.int64), minlength=num_classes)[:num_classes]
    log_post = np.log(counts / counts.sum() + eps)[(slice(None),) + (None,) * (labels.ndim - 1)]
    log_post = np.broadcast_to(log_post, (num_classes,) + labels.shape[1:]).astype(np.float32)
    for m, decisions in enumerate(labels):
        theta = np.zeros((num_classes + 1, num_classes))
        fitted = np.asarray(fit.GetConfusionMatrix(m))
        n = int(round((np.sqrt(1 + 4 * fitted.size) - 1) / 2))  # the matrix is (n + 1) x n
        theta[: n + 1, :n] = fitted.reshape(n + 1, n)
        log_post = log_post + np.log(theta[decisions.astype(np.int64)] + eps).transpose(
            -1, *range(decisions.ndim)
        ).astype(np.float32)
    log_post -= log_post.max(axis=0, keepdims=True)
    post = np.exp(log_post)
    return (post / post.sum(axis=0, keepdims=True)).astype(np.float32)


def dice_weights(metrics: Sequence[Mapping[str, Any]], class_names: Sequence[str]) -> np.ndarray:
    """``(M, C)`` weights from each member's validation Dice (``MemberSpec.metrics``).

    Background (channel 0) and classes without a stored Dice take the member's ``mean_dice``;
    a member without metrics weighs 1 for every class.

    Args:
        metrics: each member's validation metrics (``val_dice`` per class name, ``mean_dice``).
        class_names: names of channels ``1..C-1`` (the label table's order).
    """
    rows = []
    for member in metrics:
        default = float(member.get("mean_dice", 1.0))
        per_class = member.get("val_dice") or {}
        rows.append([default] + [float(per_class.get(name, default)) for name in class_names])
    return np.asarray(rows, dtype=np.float32)


def fuse(probabilities: np.ndarray, rule: Rule = "mean", weights: np.ndarray | None = None) -> np.ndarray:
    """Fused class probabilities ``(C, ...)`` of member probabilities ``(M, C, ...)`` by ``rule``.

    Raises:
        ValueError: for an unknown rule or ``weighted_mean`` without weights.
    """
    if rule == "mean":
        return mean_fusion(probabilities)
    if rule == "weighted_mean":
        if weights is None:
            raise ValueError("weighted_mean fusion needs weights (see dice_weights)")
        return weighted_mean_fusion(probabilities, weights)
    if rule in ("majority", "staple"):
        labels = probabilities.argmax(axis=1).astype(np.uint8)
        combine = majority_vote if rule == "majority" else staple
        return combine(labels, probabilities.shape[1])
    raise ValueError(f"unknown fusion rule {rule!r}; choose one of {', '.join(RULES)}")


def channel_argmax(probabilities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per voxel, the channel with the highest value (uint8; ties to the lower channel) and that value,
    for ``(C, ...)`` maps. One contiguous pass per channel: 3x faster than numpy's axis-0 ``argmax``
    plus ``max`` on a (5, 150, 270, 270) float32 map (0.22 s vs 0.70 s for the argmax alone)."""
    best = probabilities[0].copy()
    labels = np.zeros(probabilities.shape[1:], np.uint8)
    for c in range(1, len(probabilities)):
        labels[probabilities[c] > best] = c
        np.maximum(best, probabilities[c], out=best)
    return labels, best


class RunningFusion:
    """``fuse`` one member at a time: memory holds one ``(C, ...)`` sum and the members' labels, never
    the ``(M, C, ...)`` stack (at CT scale the stack was the largest allocation of a case).

    ``mean`` and ``weighted_mean`` add each member's probabilities, times its weight normalised over
    the members, into the sum (the same result as ``fuse`` on the stack); ``majority`` and
    ``staple`` need only the labels.
    """

    def __init__(
        self, rule: Rule, weights: np.ndarray | None, members: int, classes: int, shape: tuple[int, ...]
    ) -> None:
        if rule not in RULES:
            raise ValueError(f"unknown fusion rule {rule!r}; choose one of {', '.join(RULES)}")
        if rule == "weighted_mean" and weights is None:
            raise ValueError("weighted_mean fusion needs weights (see dice_weights)")
        self.rule = rule
        self.weights = member_shares(
            weights if weights is not None and rule != "mean" else np.ones(members), members, classes
        )
        self.labels = np.zeros((members, *shape), np.uint8)
        self.total = np.zeros((classes, *shape), np.float32) if rule in ("mean", "weighted_mean") else None

    def add(self, member: int, probabilities: np.ndarray, box: tuple[slice, ...] | None = None) -> None:
        """Add member ``member``'s probabilities ``(C, ...)`` of the region ``box`` (whole map when
        ``None``); outside the box the member says background with probability 1."""
        inside = (slice(None),) * (self.labels.ndim - 1) if box is None else box
        self.labels[member][inside] = channel_argmax(probabilities)[0]
        if self.total is None:
            return
        w = self.weights[member]
        if box is not None:
            self.total[0] += w[0]
            self.total[0][box] -= w[0]
        for c in range(len(w)):  # one class at a time: no (C, ...) temporary
            self.total[c][inside] += w[c] * probabilities[c]

    def result(self) -> np.ndarray:
        """The fused probabilities ``(C, ...)`` (``weighted_mean`` renormalised over classes)."""
        if self.total is None:
            combine = majority_vote if self.rule == "majority" else staple
            return combine(self.labels, self.weights.shape[1])
        if self.rule == "weighted_mean":
            self.total /= np.maximum(self.total.sum(axis=0), np.float32(1e-12))
        return self.total


def normalized_entropy(probabilities: np.ndarray) -> np.ndarray:
    """``-sum_c p_c log p_c / log C`` in ``[0, 1]`` for probabilities ``(C, ...)``."""
    p = np.clip(probabilities, 1e-12, 1.0)
    entropy = -(probabilities * np.log(p)).sum(axis=0) / np.log(probabilities.shape[0])
    return np.clip(entropy, 0.0, 1.0).astype(np.float32)


def disagreement(member_labels: np.ndarray, fused_labels: np.ndarray) -> np.ndarray:
    """Fraction of members whose label differs from the fused label, ``(M, ...) -> (...)``."""
    return (member_labels != fused_labels[None]).mean(axis=0, dtype=np.float32)


def voxel_uncertainty(
    fused: np.ndarray, member_labels: np.ndarray, fused_labels: np.ndarray, slab: int = 16
) -> np.ndarray:
    """``max(normalised entropy, disagreement)`` per voxel, float32 in ``[0, 1]``, computed ``slab``
    indices of the first spatial axis at a time (the temporaries stay one slab big)."""
    out = np.empty(fused.shape[1:], np.float32)
    for start in range(0, len(out), slab):
        part = slice(start, start + slab)
        out[part] = np.maximum(
            normalized_entropy(fused[:, part]), disagreement(member_labels[:, part], fused_labels[part])
        )
    return out


def structure_uncertainty(
    uncertainty: np.ndarray, member_labels: np.ndarray, fused_labels: np.ndarray, num_classes: int
) -> dict[int, float]:
    """Mean voxel uncertainty of each foreground class over the union of its fused and member masks.

    The union covers every voxel any member assigns to the class, so a structure that members
    place differently scores high even where the fused map is confident. Classes absent from
    every map are left out.

    Returns:
        ``{channel: score in [0, 1]}`` for channels ``1..C-1`` present somewhere.
    """
    scores = {}
    for c in range(1, num_classes):
        region = (fused_labels == c) | (member_labels == c).any(axis=0)
        if region.any():
            scores[c] = float(uncertainty[region].mean())
    return scores
