"""What a model was made for (its training domain), and the checks that tell when it does not apply.

A ``TrainingDomain`` is stored with every model (``ensemble.json``, key ``domain``). It holds:

- the modality, task and body region, and the number of input channels;
- the working spacing and the range of input spacings seen in training;
- an intensity fingerprint: the per-case range of a few features. CT: percentiles of the body's
  Hounsfield units (voxels above -500 HU). MR units are arbitrary, so MR features are taken after
  the per-image foreground z-score (``deconvseg.pipeline.normalize``): percentiles of the
  z-scored foreground and the foreground fraction, all invariant to ``x -> a x + b`` (a > 0);
- per structure: the volume range (mL) and presence rate in the training labels, and calibration
  statistics of validation predictions (mean voxel uncertainty, ensemble structure uncertainty,
  Dice) with the ``high_uncertainty`` threshold derived from them;
- the thresholds of every check and the flag rates measured with them on the validation cases.

Checks (pure functions):

- ``check_applicability``: CT model on MR input or the reverse, or the wrong number of channels,
  raises ``DomainMismatchError`` (or, when allowed, returns a ``domain_mismatch`` flag);
- ``input_flags``: ``out_of_distribution`` when a fingerprint feature or the spacing lies far
  outside training, with the figures in the reason;
- ``structure_flags``/``output_flags``: ``implausible_volume`` (outside the training range by a
  margin), ``missing_structure`` (empty where training always had it) and ``high_uncertainty``
  (above the structure's calibrated threshold).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from deconvseg.pipeline.errors import InputError
from deconvseg.pipeline.normalize import CT_BODY_HU, detect_modality, foreground_mask, normalize
from deconvseg.pipeline.volume import Volume

Modality = Literal["CT", "MR"]
PERCENTILES = (1.0, 5.0, 25.0, 50.0, 75.0, 95.0, 99.0)
SAMPLES = 200_000
FEATURE_FLOOR = {"CT": 50.0, "MR": 0.25}
INTENDED_USE = "research use; validate locally before clinical use"

DOMAIN_MISMATCH = "domain_mismatch"
OUT_OF_DISTRIBUTION = "out_of_distribution"
IMPLAUSIBLE_VOLUME = "implausible_volume"
MISSING_STRUCTURE = "missing_structure"
HIGH_UNCERTAINTY = "high_uncertainty"
CASE_FLAGS = (DOMAIN_MISMATCH, OUT_OF_DISTRIBUTION, IMPLAUSIBLE_VOLUME, MISSING_STRUCTURE)


class _Record(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Range(_Record):
    """The ``[low, high]`` of one quantity over the training cases."""

    low: float
    high: float


class DomainThresholds(_Record):
    """The margins of the checks (stored with the model so that every check is reproducible).

    Attributes:
        feature_margin: a fingerprint feature is out of distribution beyond its training range
            widened on each side by ``feature_margin`` x the range plus ``feature_floor``.
        feature_floor: absolute part of that widening, in the feature's unit, so that a feature
            that hardly varied in training is not flagged for noise; ``None`` takes the
            modality's default (``FEATURE_FLOOR``: 50 HU for CT, 0.25 standard deviations for MR).
        spacing_factor: an input spacing axis more than this factor finer or coarser than the
            training range is out of distribution.
        volume_margin: a structure is implausible above ``high x (1 + volume_margin)`` or below
            ``low / (1 + volume_margin)`` (not below when it touches the field of view's border:
            it is cut, its volume partial).
        presence_for_missing: an empty structure is ``missing_structure`` when at least this
            fraction of the training labels held it.
        uncertainty_quantile: ``high_uncertainty`` fires above this quantile of the validation
            predictions' mean uncertainty of the structure.
    """

    feature_margin: float = 0.5
    feature_floor: float | None = None
    spacing_factor: float = 2.0
    volume_margin: float = 0.5
    presence_for_missing: float = 0.99
    uncertainty_quantile: float = 0.9


class StructureCalibration(_Record):
    """Statistics of one structure on the validation predictions (``None`` where not measured).

    Attributes:
        cases: validation cases scored.
        mean_uncertainty: quantiles (``p50``, ``p90``, ``max``) of the mean voxel uncertainty
            inside the predicted structure (``stats.json``'s ``mean_uncertainty``).
        structure_uncertainty: the same quantiles of the ensemble's per-structure score (voxel
            uncertainty over the union of the members' masks: member disagreement).
        high_uncertainty: the threshold of the ``high_uncertainty`` flag.
        flag_rate: fraction of validation cases above that threshold.
        dice_flagged: mean Dice of the flagged validation predictions.
        dice_unflagged: mean Dice of the others.
    """

    cases: int
    mean_uncertainty: dict[str, float]
    structure_uncertainty: dict[str, float] = Field(default_factory=dict)
    high_uncertainty: float
    flag_rate: float
    dice_flagged: float | None = None
    dice_unflagged: float | None = None


class StructureDomain(_Record):
    """One structure in the training labels, and its calibration on validation predictions."""

    volume_ml: Range
    presence: float = Field(ge=0.0, le=1.0)
    calibration: StructureCalibration | None = None


class TrainingDomain(_Record):
    """What a model was trained on; see the module docstring.

    Attributes:
        modality: ``CT`` or ``MR``.
        task: what the model segments (e.g. ``cardiac cine-MR: RV, myocardium, LV``).
        body_region: e.g. ``heart``, ``abdomen``.
        dataset: the training data, in words.
        in_channels: input channels the networks take.
        spacing: the working grid (x, y, z mm).
        spacing_range: per axis (x, y, z), the input spacings seen in training.
        intensity: fingerprint feature name -> range over the training cases.
        structures: structure name -> volume range, presence and calibration.
        shape_score: quantiles of the shape guard's score on the validation predictions, when
            the model has a guard.
        thresholds: the margins of the checks.
        flag_rates: measured on the validation cases: fraction of cases with each case flag.
        cases: training cases the record was computed from; ``val_cases``: validation cases.
    """

    modality: Modality
    task: str
    body_region: str
    dataset: str
    in_channels: int = 1
    spacing: tuple[float, float, float]
    spacing_range: tuple[Range, Range, Range]
    intensity: dict[str, Range]
    structures: dict[str, StructureDomain]
    shape_score: dict[str, float] | None = None
    thresholds: DomainThresholds = DomainThresholds()
    flag_rates: dict[str, float] = Field(default_factory=dict)
    cases: int
    val_cases: int = 0


class CaseFlag(_Record):
    """A case-level QA flag with its reason (``qa.json``'s ``case_flags``)."""

    flag: str
    reason: str


class DomainMismatchError(InputError):
    """The model cannot apply to the input (modality or channels); ``--allow-domain-mismatch`` overrides."""


# --- computing the record ------------------------------------------------------------------------


def _sample(values: np.ndarray, seed: int = 0) -> np.ndarray:
    if values.size > SAMPLES:
        values = np.random.default_rng(seed).choice(values, SAMPLES, replace=False)
    return values.astype(np.float64)


def intensity_features(image: Volume, modality: Modality) -> dict[str, float]:
    """The fingerprint features of one image.

    CT: percentiles ``PERCENTILES`` of the body's HU (voxels above -500 HU). MR: the same
    percentiles of the foreground after the per-image z-score, and the foreground fraction
    (``deconvseg.pipeline.normalize.foreground_mask``); both invariant to ``x -> a x + b``.

    Returns:
        ``{"hu_p1": ..., ...}`` (CT) or ``{"z_p1": ..., ..., "foreground_fraction": ...}`` (MR).
    """
    array = image.array
    if modality == "CT":
        body = array[array > CT_BODY_HU]
        values = _sample(body if body.size else array.ravel())
        found = np.percentile(values, PERCENTILES)
        return {f"hu_p{p:g}": float(v) for p, v in zip(PERCENTILES, found, strict=True)}
    mask = foreground_mask(array)
    z = normalize(image, {"scheme": "mr_zscore"}).array
    values = _sample(z[mask])
    found = np.percentile(values, PERCENTILES)
    features = {f"z_p{p:g}": float(v) for p, v in zip(PERCENTILES, found, strict=True)}
    features["foreground_fraction"] = float(mask.mean())
    return features


def _range(values: Iterable[float]) -> Range:
    values = list(values)
    return Range(low=float(min(values)), high=float(max(values)))


def _quantiles(values: Sequence[float] | np.ndarray) -> dict[str, float]:
    array = np.asarray(values, dtype=float)
    return {
        "p50": round(float(np.quantile(array, 0.5)), 5),
        "p90": round(float(np.quantile(array, 0.9)), 5),
        "max": round(float(array.max()), 5),
    }


def fit_domain(
    images: Sequence[Volume],
    labels: Sequence[Volume],
    names: Mapping[int, str],
    *,
    modality: Modality,
    task: str,
    body_region: str,
    dataset: str,
    spacing: Sequence[float],
    in_channels: int = 1,
    thresholds: DomainThresholds = DomainThresholds(),
) -> TrainingDomain:
    """The training-domain record of a training set (calibration is added by ``calibrate``).

    Args:
        images: the training images, as read (intensities as acquired).
        labels: their label maps, same order and grids.
        names: label value -> structure name.
        modality: the training modality.
        task: what the model segments.
        body_region: e.g. ``heart``.
        dataset: the training data, in words.
        spacing: the working grid (x, y, z mm).
        in_channels: input channels of the networks.
        thresholds: margins of the checks.

    Raises:
        ValueError: no images, or images and labels of different lengths.
    """
    if not images or len(images) != len(labels):
        raise ValueError("fit_domain needs one label map per training image, and at least one image")
    if thresholds.feature_floor is None:
        thresholds = thresholds.model_copy(update={"feature_floor": FEATURE_FLOOR[modality]})
    features = [intensity_features(image, modality) for image in images]
    spacings = np.array([image.spacing for image in images], dtype=float)
    volumes: dict[str, list[float]] = {name: [] for name in names.values()}
    for label in labels:
        counts = np.bincount(label.array.ravel().astype(np.int64), minlength=max(names) + 1)
        for value, name in names.items():
            volumes[name].append(float(counts[value]) * label.voxel_volume_ml)
    structures = {}
    for name, found in volumes.items():
        present = [v for v in found if v > 0]
        structures[name] = StructureDomain(volume_ml=_range(present or [0.0]), presence=len(present) / len(found))
    return TrainingDomain(
        modality=modality,
        task=task,
        body_region=body_region,
        dataset=dataset,
        in_channels=in_channels,
        spacing=tuple(float(s) for s in spacing),
        spacing_range=tuple(_range(spacings[:, axis]) for axis in range(3)),
        intensity={key: _range(f[key] for f in features) for key in features[0]},
        structures=structures,
        thresholds=thresholds,
        cases=len(images),
    )


def calibrate(
    domain: TrainingDomain,
    rows: Sequence[Sequence[Mapping[str, Any]]],
    dice: Sequence[Mapping[str, float]],
    *,
    structure_uncertainty: Sequence[Mapping[str, float]] | None = None,
    shape_scores: Sequence[float] | None = None,
    case_flags: Sequence[Sequence[CaseFlag]] | None = None,
) -> TrainingDomain:
    """``domain`` with calibration statistics of validation predictions and the measured flag rates.

    Args:
        domain: the record from ``fit_domain``.
        rows: per validation case, its ``stats.json`` rows (``name``, ``voxels``, ``mean_uncertainty``, ...).
        dice: per validation case, Dice per structure name.
        structure_uncertainty: per case, the ensemble's per-structure score by name.
        shape_scores: per case, the shape guard's score, when the model has a guard.
        case_flags: per case, the case flags the checks raised (for the measured rates); the
            rate of each flag is stored in ``flag_rates``.

    Returns:
        A new record; every structure gets a ``StructureCalibration`` (its ``high_uncertainty``
        threshold is the ``thresholds.uncertainty_quantile`` of its validation values).
    """
    if not rows or len(rows) != len(dice):
        raise ValueError("calibrate needs one Dice entry per validation case, and at least one case")
    q = domain.thresholds.uncertainty_quantile
    structures = {}
    for name, structure in domain.structures.items():
        pairs = [
            (row["mean_uncertainty"], case_dice.get(name))
            for case_rows, case_dice in zip(rows, dice, strict=True)
            for row in case_rows
            if row["name"] == name and row.get("mean_uncertainty") is not None
        ]
        if not pairs:
            structures[name] = structure
            continue
        values = np.array([u for u, _ in pairs], dtype=float)
        threshold = float(np.quantile(values, q))
        flagged = [d for u, d in pairs if u > threshold and d is not None]
        unflagged = [d for u, d in pairs if u <= threshold and d is not None]
        scores = [s[name] for s in structure_uncertainty or [] if name in s]
        calibration = StructureCalibration(
            cases=len(pairs),
            mean_uncertainty=_quantiles(values),
            structure_uncertainty=_quantiles(scores) if scores else {},
            high_uncertainty=round(threshold, 5),
            flag_rate=round(float((values > threshold).mean()), 4),
            dice_flagged=round(float(np.mean(flagged)), 4) if flagged else None,
            dice_unflagged=round(float(np.mean(unflagged)), 4) if unflagged else None,
        )
        structures[name] = structure.model_copy(update={"calibration": calibration})
    rates = dict(domain.flag_rates)
    if case_flags is not None:
        for flag in CASE_FLAGS:
            rates[flag] = round(float(np.mean([any(f.flag == flag for f in flags) for flags in case_flags])), 4)
        rates["any"] = round(float(np.mean([bool(flags) for flags in case_flags])), 4)
    return domain.model_copy(
        update={
            "structures": structures,
            "val_cases": len(rows),
            "flag_rates": rates,
            "shape_score": _quantiles(shape_scores) if shape_scores else domain.shape_score,
        }
    )


# --- checks --------------------------------------------------------------------------------------


def check_applicability(
    image: Volume,
    domain: TrainingDomain,
    model: str,
    *,
    channels: int = 1,
    modality: str | None = None,
    allow_mismatch: bool = False,
) -> list[CaseFlag]:
    """Refuse an input the model cannot apply to: the other modality, or the wrong channel count.

    Args:
        image: the input volume (its ``modality`` tag, else ``detect_modality``).
        domain: the model's training domain.
        model: the model's name, for the message.
        channels: the input's channel count.
        modality: an explicit modality (overrides the tag and the detection).
        allow_mismatch: return ``domain_mismatch`` flags instead of raising.

    Returns:
        ``[]`` when the model applies; with ``allow_mismatch``, one flag per mismatch.

    Raises:
        DomainMismatchError: a mismatch, unless ``allow_mismatch``. Its message names the input,
            the model, the mismatch and the override (a modality mismatch says "modality").
    """
    source = str(image.metadata.get("source") or "input")
    found = detect_modality(image, modality)
    problems = []
    if found != domain.modality:
        problems.append(
            f"modality {found} but model {model!r} was trained on {domain.modality} "
            f"({domain.task}, {domain.body_region})"
        )
    if channels != domain.in_channels:
        problems.append(f"{channels} channel(s) but model {model!r} takes {domain.in_channels}")
    if problems and not allow_mismatch:
        raise DomainMismatchError(
            source,
            "; ".join(problems),
            f"use a model made for this data, or pass --allow-domain-mismatch to segment "
            f"it anyway (flagged {DOMAIN_MISMATCH})",
        )
    return [CaseFlag(flag=DOMAIN_MISMATCH, reason=problem) for problem in problems]


def _outside(value: float, bounds: Range, margin: float, floor: float) -> bool:
    pad = margin * (bounds.high - bounds.low) + floor
    return value < bounds.low - pad or value > bounds.high + pad


def input_flags(image: Volume, domain: TrainingDomain) -> list[CaseFlag]:
    """``out_of_distribution`` when the input's fingerprint or spacing lies far outside training.

    The fingerprint is computed as the model's modality would see it (HU percentiles for a CT
    model, z-scored features for an MR model); the reason lists every feature out of range with
    its value and the training range.
    """
    t = domain.thresholds
    floor = FEATURE_FLOOR[domain.modality] if t.feature_floor is None else t.feature_floor
    features = intensity_features(image, domain.modality)
    far = [
        f"{key} {features[key]:.3g} (training {bounds.low:.3g}..{bounds.high:.3g})"
        for key, bounds in domain.intensity.items()
        if key in features and _outside(features[key], bounds, t.feature_margin, floor)
    ]
    spacing = [
        f"{axis} spacing {s:.3g} mm (training {r.low:.3g}..{r.high:.3g})"
        for axis, s, r in zip("xyz", image.spacing, domain.spacing_range, strict=True)
        if s < r.low / t.spacing_factor or s > r.high * t.spacing_factor
    ]
    flags = []
    if far:
        reason = "intensity fingerprint far outside training: " + ", ".join(far)
        flags.append(CaseFlag(flag=OUT_OF_DISTRIBUTION, reason=reason))
    if spacing:
        flags.append(CaseFlag(flag=OUT_OF_DISTRIBUTION, reason="spacing far outside training: " + ", ".join(spacing)))
    return flags


def structure_flags(row: Mapping[str, Any], domain: TrainingDomain) -> list[tuple[str, str]]:
    """``(flag, reason)`` pairs of one ``stats.json`` row against the structure's training record."""
    structure = domain.structures.get(row["name"])
    if structure is None:
        return []
    t = domain.thresholds
    if not row["voxels"]:
        if structure.presence >= t.presence_for_missing:
            return [(MISSING_STRUCTURE, f"{row['name']} empty (in {structure.presence:.0%} of training labels)")]
        return []
    flags = []
    volume, bounds = float(row["volume_ml"]), structure.volume_ml
    too_small = volume < bounds.low / (1 + t.volume_margin) and not row.get("touches_border")
    if too_small or volume > bounds.high * (1 + t.volume_margin):
        training = f"training {bounds.low:.1f}..{bounds.high:.1f} mL"
        flags.append((IMPLAUSIBLE_VOLUME, f"{row['name']} {volume:.1f} mL ({training})"))
    calibration, uncertainty = structure.calibration, row.get("mean_uncertainty")
    if calibration is not None and uncertainty is not None and uncertainty > calibration.high_uncertainty:
        limit = f"{calibration.high_uncertainty:.3f} (rate {calibration.flag_rate:.0%} on validation)"
        flags.append((HIGH_UNCERTAINTY, f"{row['name']} mean uncertainty {uncertainty:.3f} > {limit}"))
    return flags


def output_flags(rows: list[dict[str, Any]], domain: TrainingDomain) -> list[CaseFlag]:
    """Set each ``stats.json`` row's ``flags`` from its training record (in place: the model's
    calibrated flags replace the generic ``missing``/``high_uncertainty``/``implausible_volume``)
    and return the case-level flags: ``implausible_volume`` and ``missing_structure``, one per
    flag kind, naming every structure. ``high_uncertainty`` stays a structure flag.
    """
    generic = {"missing", MISSING_STRUCTURE, IMPLAUSIBLE_VOLUME, HIGH_UNCERTAINTY}
    reasons: dict[str, list[str]] = {}
    for row in rows:
        found = structure_flags(row, domain)
        row["flags"] = [f for f in row["flags"] if f not in generic] + [flag for flag, _ in found]
        for flag, reason in found:
            if flag != HIGH_UNCERTAINTY:
                reasons.setdefault(flag, []).append(reason)
    return [CaseFlag(flag=flag, reason=", ".join(found)) for flag, found in reasons.items()]


def domain_summary(domain: TrainingDomain) -> str:
    """One line on what the model was trained on, for the report and the model card."""
    r = domain.spacing_range
    return (
        f"{domain.modality}, {domain.task} ({domain.body_region}); "
        f"{domain.dataset}, {domain.cases} training cases; "
        f"spacing {r[0].low:g}-{r[0].high:g} x {r[1].low:g}-{r[1].high:g} x {r[2].low:g}-{r[2].high:g} mm"
    )
