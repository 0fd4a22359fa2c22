"""Point-spread functions (PSFs) for 2D deblurring: Gaussian, disk, linear motion, from an array.

Every PSF is a float64 2D array with odd side lengths, its centre at ``(h // 2, w // 2)``,
non-negative and summing to one, so that blurring keeps the mean intensity (eq. 1 of the
lecture: ``y = x * k``). ``parse_psf("disk:7")`` turns the CLI/config spelling into an array.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np

from deconvseg.pipeline.errors import ConfigError, InputError

__all__ = ["gaussian_psf", "disk_psf", "motion_psf", "psf_from_array", "parse_psf"]


def psf_from_array(kernel: np.ndarray) -> np.ndarray:
    """Validate a measured or hand-made PSF and normalise it to unit sum.

    Args:
        kernel: 2D array with odd side lengths and non-negative, finite values.

    Returns:
        A float64 copy that sums to one.

    Raises:
        ValueError: the array is not 2D, has an even side, negative or non-finite values, or sums to 0.
    """
    k = np.array(kernel, dtype=np.float64)
    if k.ndim != 2 or k.shape[0] % 2 == 0 or k.shape[1] % 2 == 0:
        raise ValueError(f"a PSF must be a 2D array with odd sides, got shape {k.shape}; pad it by one row/column")
    if not np.all(np.isfinite(k)) or np.any(k < 0):
        raise ValueError("a PSF must be finite and non-negative; remove NaN/negative entries")
    total = k.sum()
    if total <= 0:
        raise ValueError("a PSF must have a positive sum; check the array")
    return k / total


def gaussian_psf(sigma: float, size: int | None = None) -> np.ndarray:
    """Isotropic Gaussian PSF ``exp(-r^2 / (2 sigma^2))``, normalised.

    Args:
        sigma: standard deviation in pixels (> 0).
        size: odd side length; default ``2 * ceil(3 sigma) + 1``.
    """
    if sigma <= 0:
        raise ValueError(f"Gaussian sigma must be > 0, got {sigma}")
    size = size or 2 * math.ceil(3 * sigma) + 1
    r = np.arange(size) - size // 2
    g = np.exp(-(r**2) / (2 * sigma**2))
    return psf_from_array(np.outer(g, g))


def disk_psf(radius: float, supersample: int = 8) -> np.ndarray:
    """Uniform disk (out-of-focus) PSF of the given radius, with anti-aliased edges.

    Each pixel holds the fraction of its area inside the disk, estimated on a
    ``supersample x supersample`` sub-grid (Xu et al. 2014 degrade with radius 7).
    """
    if radius <= 0:
        raise ValueError(f"disk radius must be > 0, got {radius}")
    half = math.ceil(radius)
    size = 2 * half + 1
    sub = (np.arange(size * supersample) + 0.5) / supersample - size / 2
    yy, xx = np.meshgrid(sub, sub, indexing="ij")
    inside = (yy**2 + xx**2 <= radius**2).astype(np.float64)
    return psf_from_array(inside.reshape(size, supersample, size, supersample).mean(axis=(1, 3)))


def motion_psf(length: float, angle_deg: float = 0.0, supersample: int = 8) -> np.ndarray:
    """Linear motion PSF: a line segment of ``length`` pixels at ``angle_deg`` (0 = along x, CCW).

    The segment is sampled densely and splatted bilinearly, so sub-pixel lengths and any angle work.
    """
    if length <= 0:
        raise ValueError(f"motion length must be > 0, got {length}")
    half = math.ceil(length / 2) + 1
    size = 2 * half + 1
    t = np.linspace(-length / 2, length / 2, max(2, int(length * supersample) + 1))
    theta = math.radians(angle_deg)
    xs, ys = half + t * math.cos(theta), half - t * math.sin(theta)
    k = np.zeros((size, size))
    x0, y0 = np.floor(xs).astype(int), np.floor(ys).astype(int)
    fx, fy = xs - x0, ys - y0
    for dy, dx, w in ((0, 0, (1 - fy) * (1 - fx)), (0, 1, (1 - fy) * fx), (1, 0, fy * (1 - fx)), (1, 1, fy * fx)):
        np.add.at(k, (y0 + dy, x0 + dx), w)
    return psf_from_array(k)


def parse_psf(spec: str) -> np.ndarray:
    """PSF from its text spelling: ``disk:R``, ``gaussian:SIGMA``, ``motion:LENGTH[:ANGLE]`` or a ``.npy`` path.

    Raises:
        ConfigError: unknown kind or malformed numbers (the message shows the accepted forms).
        InputError: a ``.npy`` path that is missing or not a valid PSF.
    """
    if spec.endswith(".npy"):
        path = Path(spec)
        if not path.is_file():
            raise InputError(path, "PSF file not found", "give a .npy 2D array or e.g. --psf disk:7")
        try:
            return psf_from_array(np.load(path, allow_pickle=False))
        except ValueError as err:
            raise InputError(path, f"not a usable PSF ({err})", "save a 2D non-negative array with odd sides") from err
    kind, _, rest = spec.partition(":")
    builders: dict[str, Callable[..., np.ndarray]] = {"disk": disk_psf, "gaussian": gaussian_psf, "motion": motion_psf}
    forms = "disk:7, gaussian:2.0, motion:15:30 or a .npy file"
    if kind not in builders or not rest:
        raise ConfigError(f"psf '{spec}': unknown form; use {forms}")
    try:
        args = [float(part) for part in rest.split(":")]
        return builders[kind](*args)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"psf '{spec}': {err}; use {forms}") from err
