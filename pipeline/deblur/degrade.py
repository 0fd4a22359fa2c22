"""Synthetic degradations for training and benchmarking deblurring (float images in [0, 1]).

Xu et al. (NIPS 2014, "Deep Convolutional Neural Network for Image Deconvolution") degrade
sharp photographs with a disk PSF of radius 7, Gaussian noise of variance 0.0005, saturation
(intensities x1.3, then clipped to [0, 1]) and JPEG compression at quality 70. The steps here,
in that order:

    y = JPEG_q( clip( s * (x *valid k + n), 0, 1 ) ),   n ~ N(0, sigma^2)
    reference = clip( s * crop(x), 0, 1 )

The blur is a *valid* convolution: the degraded image is smaller than ``x`` by the PSF size - 1,
so its borders carry content from outside the frame, as a real photograph's do. The reference is
the sharp image on the same grid, saturated like the camera would saturate the sharp scene (the
outliers of Xu et al. are the difference between blurring-then-clipping and clipping-then-blurring).
Clipping happens only in the saturation step and, unavoidably, in 8-bit JPEG quantisation.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy.signal import fftconvolve

from deconvseg.pipeline.deblur.psf import disk_psf, gaussian_psf

__all__ = ["Degradation", "xu_degradation", "gaussian_degradation", "blur_valid", "jpeg_roundtrip", "DEGRADATIONS"]


def blur_valid(image: np.ndarray, psf: np.ndarray) -> np.ndarray:
    """``image * psf`` on the pixels where the PSF lies wholly inside the image (a new array)."""
    return fftconvolve(np.asarray(image, dtype=np.float64), psf, mode="valid")


def jpeg_roundtrip(image: np.ndarray, quality: int) -> np.ndarray:
    """Encode a [0, 1] float image as 8-bit JPEG at ``quality`` with Pillow and decode it back.

    Raises:
        ValueError: values outside [0, 1] (8-bit JPEG cannot hold them; clip explicitly first).
    """
    if image.min() < 0 or image.max() > 1:
        raise ValueError("JPEG round trip needs values in [0, 1]; clip or saturate explicitly first")
    buffer = io.BytesIO()
    Image.fromarray(np.round(image * 255).astype(np.uint8)).save(buffer, format="JPEG", quality=int(quality))
    buffer.seek(0)
    return np.asarray(Image.open(buffer), dtype=np.float64) / 255.0


@dataclass(frozen=True, eq=False)
class Degradation:
    """Blur + noise [+ saturation] [+ JPEG], applied to a sharp image in [0, 1].

    Attributes:
        psf: the blur kernel (normalised, odd sides).
        noise_var: variance of the additive Gaussian noise.
        saturation: intensity factor before clipping to [0, 1]; ``None`` = no saturation.
        jpeg_quality: Pillow JPEG quality; ``None`` = no compression (then nothing is clipped).
        name: short label used in benchmark output.
    """

    psf: np.ndarray
    noise_var: float = 0.0005
    saturation: float | None = 1.3
    jpeg_quality: int | None = 70
    name: str = "custom"

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Degrade ``image``; returns ``(degraded, reference)`` on the same (cropped) grid, float64."""
        x = np.asarray(image, dtype=np.float64)
        if x.ndim != 2:
            raise ValueError(f"degradation needs a 2D image, got shape {x.shape}")
        hy, hx = self.psf.shape[0] // 2, self.psf.shape[1] // 2
        reference = x[hy : x.shape[0] - hy, hx : x.shape[1] - hx].copy()
        y = blur_valid(x, self.psf) + rng.normal(0.0, np.sqrt(self.noise_var), size=reference.shape)
        if self.saturation is not None:
            y = np.clip(self.saturation * y, 0.0, 1.0)
            reference = np.clip(self.saturation * reference, 0.0, 1.0)
        if self.jpeg_quality is not None:
            y = jpeg_roundtrip(np.clip(y, 0.0, 1.0), self.jpeg_quality)
        return y, reference


def xu_degradation() -> Degradation:
    """Xu et al. 2014: disk radius 7, noise variance 0.0005, saturation x1.3, JPEG quality 70."""
    return Degradation(disk_psf(7), noise_var=0.0005, saturation=1.3, jpeg_quality=70, name="xu")


def gaussian_degradation() -> Degradation:
    """Gaussian blur (sigma 2 px) with Gaussian noise of variance 0.0005; no saturation, no JPEG."""
    return Degradation(gaussian_psf(2.0), noise_var=0.0005, saturation=None, jpeg_quality=None, name="gaussian")


DEGRADATIONS = {"xu": xu_degradation, "gaussian": gaussian_degradation}
