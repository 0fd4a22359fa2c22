"""Intensity normalisation fitted on training data, stored as a JSON-able spec with the model.

Schemes (the spec's ``scheme`` key):

* ``"ct"`` -- nnU-Net's CT scheme (Isensee et al., Nature Methods 2021): clip to the 0.5 and
  99.5 percentiles of the *dataset's* foreground intensities, then ``(x - mean) / std`` with the
  dataset's foreground mean and standard deviation (taken after clipping). Foreground = voxels
  with label > 0, or voxels above -500 HU (the body) when no labels are given.
* ``"mr_zscore"`` -- per image: ``(x - mean_F) / std_F`` over the image's own foreground ``F``
  (``foreground_mask``: a robust 10 % threshold). Every step is equivariant under ``x -> a x + b`` (a > 0), so
  the output is invariant to the scanner's arbitrary scaling.
* ``"nyul"`` -- Nyúl & Udupa histogram standardisation (Nyúl, Udupa & Zhang, IEEE TMI 19(2),
  2000): foreground percentiles ``p = (1, 10, 20, ..., 90, 99)`` of each training image are
  mapped linearly so that ``p1 -> 0`` and ``p99 -> 1``, and averaged into standard landmarks
  ``mu``. A new image is mapped piecewise linearly from its own landmarks to ``mu``
  (extrapolated linearly beyond the ends). Also invariant to ``a x + b``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np

from deconvseg.pipeline.volume import Volume

Scheme = Literal["ct", "mr_zscore", "nyul", "auto"]
NYUL_PERCENTILES = (1.0, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0, 99.0)
CT_BODY_HU = -500.0
SAMPLES_PER_CASE = 100_000


def detect_modality(volume: Volume, override: str | None = None) -> Literal["CT", "MR"]:
    """CT or MR: the explicit ``override``, else the DICOM/metadata tag, else intensity statistics.

    The statistical rule: a volume whose 0.5th percentile lies below -200 is CT (air and fat in
    Hounsfield units are negative; magnitude MR images are not). Pass ``override`` for the rest.

    Raises:
        ValueError: ``override`` is neither "CT" nor "MR".
    """
    if override is not None:
        if override.upper() not in ("CT", "MR"):
            raise ValueError(f"modality override must be 'CT' or 'MR', got {override!r}")
        return override.upper()  # type: ignore[return-value]
    tag = (volume.modality or "").upper()
    if tag in ("CT", "MR"):
        return tag  # type: ignore[return-value]
    return "CT" if float(np.percentile(_sample(volume.array, None, 0), 0.5)) < -200 else "MR"


def with_modality(volume: Volume, override: str | None = None) -> Volume:
    """``volume`` (a new object, same voxels) with ``metadata["modality"]`` from ``detect_modality``,
    so that exports report CT intensities in HU even for NIfTI input without a modality tag."""
    return volume.with_array(volume.array, modality=detect_modality(volume, override))


def foreground_mask(array: np.ndarray) -> np.ndarray:
    """Foreground of one image: above ``p2 + 0.1 (p98 - p2)`` (FSL BET's robust threshold).

    Percentiles move with ``a x + b`` (a > 0), so the mask is invariant to affine intensity changes.
    """
    p2, p98 = np.percentile(_sample(array, None, 0), [2.0, 98.0])
    mask = array > p2 + 0.1 * (p98 - p2)
    return mask if mask.any() else np.ones(array.shape, dtype=bool)


def fit_normalization(
    scheme: Scheme,
    images: Sequence[Volume],
    labels: Sequence[Volume | None] | None = None,
) -> dict:
    """Fit a normalisation spec on training images (and their labels, for the CT foreground).

    Args:
        scheme: ``"ct"``, ``"mr_zscore"``, ``"nyul"``, or ``"auto"`` (``"ct"`` when the first image
            is CT by ``detect_modality``, else ``"mr_zscore"``).
        images: the training images.
        labels: label maps in the same order (``None`` entries allowed).

    Returns:
        A JSON-able dict for ``normalize`` (and for ``model.json``'s ``normalization``).
    """
    if not images:
        raise ValueError("fit_normalization needs at least one image")
    if scheme == "auto":
        scheme = "ct" if detect_modality(images[0]) == "CT" else "mr_zscore"
    if scheme == "mr_zscore":
        return {"scheme": "mr_zscore"}
    if scheme == "ct":
        labels = list(labels) if labels is not None else [None] * len(images)
        values = np.concatenate(
            [_foreground_values(img, lab, seed, "CT") for seed, (img, lab) in enumerate(zip(images, labels))]
        )
        lo, hi = np.percentile(values, [0.5, 99.5])
        clipped = np.clip(values, lo, hi)
        return {
            "scheme": "ct",
            "clip": [float(lo), float(hi)],
            "mean": float(clipped.mean()),
            "std": float(clipped.std()),
        }
    if scheme == "nyul":
        scaled = []
        for image in images:
            marks = _landmarks(image.array)
            scaled.append((marks - marks[0]) / max(marks[-1] - marks[0], 1e-12))
        return {"scheme": "nyul", "percentiles": list(NYUL_PERCENTILES), "landmarks": np.mean(scaled, axis=0).tolist()}
    raise ValueError(f"unknown normalisation scheme {scheme!r}; use ct, mr_zscore, nyul or auto")


def normalize(volume: Volume, spec: dict) -> Volume:
    """Apply a spec from ``fit_normalization``; returns a new float32 volume (input untouched)."""
    if volume.kind != "image":
        raise ValueError("only images are normalised, not label maps")
    scheme = spec.get("scheme")
    # float32 arithmetic (in place on one new array) unless the input carries more precision.
    wide = volume.array.dtype.itemsize > 4 or (volume.array.dtype.itemsize == 4 and volume.array.dtype.kind != "f")
    out: np.ndarray = volume.array.astype(np.float64 if wide else np.float32)
    if scheme == "ct":
        np.clip(out, *spec["clip"], out=out)
        out -= spec["mean"]
        out /= max(spec["std"], 1e-8)
    elif scheme == "mr_zscore":
        values = out[foreground_mask(out)]
        mean, std = float(values.mean(dtype=np.float64)), float(values.std(dtype=np.float64))
        out -= mean
        out /= max(std, 1e-8 * max(abs(mean), 1.0))
    elif scheme == "nyul":
        out = _piecewise_linear(
            out.astype(np.float64), _landmarks(out), np.asarray(spec["landmarks"], dtype=np.float64)
        )
    else:
        raise ValueError(f"unknown normalisation scheme {scheme!r} in spec")
    return volume.with_array(out.astype(np.float32, copy=False), normalization=scheme)


def _landmarks(array: np.ndarray) -> np.ndarray:
    values = np.asarray(array, dtype=np.float64)[foreground_mask(array)]
    marks = np.percentile(values, NYUL_PERCENTILES)
    # Strictly increasing (ties would divide by zero); the offset scales with the data, keeping invariance.
    return marks + np.arange(len(marks)) * 1e-9 * max(float(np.ptp(marks)), 1e-12)


def _piecewise_linear(x: np.ndarray, source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Map ``source`` landmarks onto ``target`` linearly between them and beyond the ends."""
    out = np.interp(x, source, target)
    low, high = x < source[0], x > source[-1]
    slope_low = (target[1] - target[0]) / (source[1] - source[0])
    slope_high = (target[-1] - target[-2]) / (source[-1] - source[-2])
    out[low] = target[0] + (x[low] - source[0]) * slope_low
    out[high] = target[-1] + (x[high] - source[-1]) * slope_high
    return out


def _foreground_values(image: Volume, label: Volume | None, seed: int, modality: str) -> np.ndarray:
    """Sampled foreground intensities: label > 0, else the body (CT: > -500 HU; MR: ``foreground_mask``)."""
    if label is not None:
        mask = label.array > 0
    else:
        mask = image.array > CT_BODY_HU if modality == "CT" else foreground_mask(image.array)
    return _sample(image.array, mask, seed)


def _sample(array: np.ndarray, mask: np.ndarray | None, seed: int) -> np.ndarray:
    """Up to ``SAMPLES_PER_CASE`` voxel values (inside ``mask``), drawn with a fixed seed."""
    values = array[mask] if mask is not None else array.ravel()
    if values.size > SAMPLES_PER_CASE:
        values = np.random.default_rng(seed).choice(values, SAMPLES_PER_CASE, replace=False)
    return values.astype(np.float64)


def fingerprint(cases: Sequence) -> dict:
    """Dataset statistics computed once and stored with the model.

    Args:
        cases: ``deconvseg.pipeline.io.datasets.Case`` objects (``image``, optional ``label``).

    Returns:
        ``n_cases``, ``modality``, ``spacings`` (per case, x y z), ``median_spacing``,
        ``median_shape`` (z y x), ``anisotropic``, ``suggested_spacing`` (nnU-Net: the median,
        with the thick axis at its 10th percentile when anisotropic), ``intensity`` (foreground
        percentiles 0.5/50/99.5, mean, std, min, max) and ``class_frequencies`` ({value: fraction
        of labelled voxels}).
    """
    if not cases:
        raise ValueError("fingerprint needs at least one case")
    spacings = np.array([c.image.spacing for c in cases], dtype=float)
    shapes = np.array([c.image.shape for c in cases], dtype=float)
    median = np.median(spacings, axis=0)
    anisotropic = bool(median.max() / median.min() > 3.0)
    suggested = median.copy()
    if anisotropic:
        thick = int(np.argmax(median))
        suggested[thick] = np.percentile(spacings[:, thick], 10)
    modalities = [detect_modality(c.image) for c in cases]
    values = np.concatenate(
        [_foreground_values(c.image, c.label, i, m) for i, (c, m) in enumerate(zip(cases, modalities))]
    )
    counts: dict[int, int] = {}
    for case in cases:
        if case.label is not None:
            found, n = np.unique(case.label.array, return_counts=True)
            for value, count in zip(found.tolist(), n.tolist()):
                counts[value] = counts.get(value, 0) + count
    total = sum(counts.values()) or 1
    return {
        "n_cases": len(cases),
        "modality": max(set(modalities), key=modalities.count),
        "spacings": spacings.tolist(),
        "median_spacing": median.tolist(),
        "median_shape": np.median(shapes, axis=0).tolist(),
        "anisotropic": anisotropic,
        "suggested_spacing": suggested.tolist(),
        "intensity": {
            "percentile_00_5": float(np.percentile(values, 0.5)),
            "median": float(np.median(values)),
            "percentile_99_5": float(np.percentile(values, 99.5)),
            "mean": float(values.mean()),
            "std": float(values.std()),
            "min": float(values.min()),
            "max": float(values.max()),
        },
        "class_frequencies": {str(k): v / total for k, v in sorted(counts.items())},
    }
