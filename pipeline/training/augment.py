"""Training augmentation of (image, label) patches, in the TorchIO/MONAI three-layer style.

Each transform is a pure, deterministic function of its parameters (``flip``, ``rotate_scale``,
``intensity``, ``gamma``, ``add_noise``). ``RandomAugment`` samples one ``AugmentParams`` record
from a ``numpy.random.Generator`` and then calls ``apply_augment``, so a seed reproduces a patch
exactly and the sampled parameters can be logged.

Rotation and scaling act in the ``(y, x)`` plane only: medical volumes are usually acquired
slice by slice with a coarse slice axis (ACDC: 5-10 mm), and rotating across it would mix slices.
Inputs are never modified in place.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from deconvseg.pipeline.config import Settings


class AugmentConfig(Settings):
    """Probabilities and ranges of the random transforms (all off when ``enabled`` is false)."""

    enabled: bool = True
    flip_axes: tuple[int, ...] = (1, 2)  # array axes (z=0, y=1, x=2) that may be mirrored
    p_rotate_scale: float = 0.3
    max_rotation_deg: float = 15.0
    scale_range: tuple[float, float] = (0.85, 1.15)
    p_intensity: float = 0.3
    intensity_scale: tuple[float, float] = (0.9, 1.1)
    intensity_shift: tuple[float, float] = (-0.1, 0.1)
    p_gamma: float = 0.3
    gamma_range: tuple[float, float] = (0.7, 1.5)
    p_noise: float = 0.15
    noise_std: tuple[float, float] = (0.0, 0.1)


@dataclass(frozen=True)
class AugmentParams:
    """One sampled set of parameters; the identity when every field is at its default."""

    flip_axes: tuple[int, ...] = ()
    rotation_deg: float = 0.0
    scale: float = 1.0
    intensity_scale: float = 1.0
    intensity_shift: float = 0.0
    gamma: float = 1.0
    noise_std: float = 0.0
    noise_seed: int = 0


def flip(array: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    """Mirror the last three axes listed in ``axes`` (0=z, 1=y, 2=x); returns a new array."""
    if not axes:
        return array.copy()
    offset = array.ndim - 3
    return np.flip(array, axis=tuple(offset + a for a in axes)).copy()


def rotate_scale(array: np.ndarray, angle_deg: float, scale: float, *, nearest: bool) -> np.ndarray:
    """Rotate every ``(y, x)`` slice by ``angle_deg`` and zoom by ``scale`` about the slice centre.

    Values outside the input are filled with the nearest edge value (images) or taken by nearest
    neighbour (labels; ``nearest=True``), so label values stay integers from the input.

    Args:
        array: ``(z, y, x)`` array.
        angle_deg: rotation angle in degrees (counter-clockwise in array coordinates).
        scale: zoom factor; > 1 magnifies the content.
        nearest: nearest-neighbour interpolation (labels) instead of bilinear.

    Returns:
        A new array of the same shape and dtype.
    """
    theta = np.deg2rad(angle_deg)
    cos, sin = np.cos(theta) / scale, np.sin(theta) / scale
    matrix = torch.tensor([[cos, -sin, 0.0], [sin, cos, 0.0]], dtype=torch.float32)[None]
    slices = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[:, None]  # (z, 1, y, x)
    grid = F.affine_grid(matrix.expand(slices.shape[0], 2, 3), list(slices.shape), align_corners=False)
    mode = "nearest" if nearest else "bilinear"
    out = F.grid_sample(slices, grid, mode=mode, padding_mode="border", align_corners=False)
    return out[:, 0].numpy().astype(array.dtype, copy=False)


def intensity(array: np.ndarray, scale: float, shift: float) -> np.ndarray:
    """``array * scale + shift`` (for z-scored images a shift is in units of the std)."""
    return (array * scale + shift).astype(np.float32, copy=False)


def gamma(array: np.ndarray, value: float) -> np.ndarray:
    """Gamma on the patch rescaled to [0, 1], then mapped back to its original range.

    ``y = lo + (hi - lo) * ((x - lo) / (hi - lo)) ** value`` (nnU-Net's form; keeps the range).
    """
    lo, hi = float(array.min()), float(array.max())
    if hi - lo < 1e-8 or value == 1.0:
        return array.astype(np.float32, copy=True)
    unit = (array - lo) / (hi - lo)
    return (lo + (hi - lo) * unit**value).astype(np.float32, copy=False)


def add_noise(array: np.ndarray, std: float, seed: int) -> np.ndarray:
    """Add zero-mean Gaussian noise of standard deviation ``std`` drawn from ``seed``."""
    if std <= 0:
        return array.astype(np.float32, copy=True)
    noise = np.random.default_rng(seed).normal(0.0, std, size=array.shape).astype(np.float32)
    return (array + noise).astype(np.float32, copy=False)


def apply_augment(image: np.ndarray, label: np.ndarray, params: AugmentParams) -> tuple[np.ndarray, np.ndarray]:
    """Apply ``params`` to an image patch ``(z, y, x)`` and its label patch; deterministic."""
    image, label = flip(image, params.flip_axes), flip(label, params.flip_axes)
    if params.rotation_deg != 0.0 or params.scale != 1.0:
        image = rotate_scale(image, params.rotation_deg, params.scale, nearest=False)
        label = rotate_scale(label, params.rotation_deg, params.scale, nearest=True)
    image = intensity(image, params.intensity_scale, params.intensity_shift)
    image = gamma(image, params.gamma)
    image = add_noise(image, params.noise_std, params.noise_seed)
    return image, label


class RandomAugment:
    """Sample ``AugmentParams`` from ``config`` with a caller's generator, then apply them."""

    def __init__(self, config: AugmentConfig) -> None:
        self.config = config

    def sample(self, rng: np.random.Generator) -> AugmentParams:
        """Draw one parameter record (the identity when augmentation is disabled)."""
        c = self.config
        if not c.enabled:
            return AugmentParams()
        axes = tuple(a for a in c.flip_axes if rng.random() < 0.5)
        rotation, scale = 0.0, 1.0
        if rng.random() < c.p_rotate_scale:
            rotation = float(rng.uniform(-c.max_rotation_deg, c.max_rotation_deg))
            scale = float(rng.uniform(*c.scale_range))
        i_scale, i_shift = 1.0, 0.0
        if rng.random() < c.p_intensity:
            i_scale, i_shift = float(rng.uniform(*c.intensity_scale)), float(rng.uniform(*c.intensity_shift))
        g = float(rng.uniform(*c.gamma_range)) if rng.random() < c.p_gamma else 1.0
        std = float(rng.uniform(*c.noise_std)) if rng.random() < c.p_noise else 0.0
        return AugmentParams(axes, rotation, scale, i_scale, i_shift, g, std, int(rng.integers(2**31)))

    def __call__(
        self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray, AugmentParams]:
        params = self.sample(rng)
        out_image, out_label = apply_augment(image, label, params)
        return out_image, out_label, params
