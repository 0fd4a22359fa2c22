"""Classical non-blind deconvolution of 2D images: Wiener (eq. 3), the pseudo-inverse kernel k†,
its SVD separation (eq. 5), and scikit-image baselines (Richardson-Lucy, Wiener, unsupervised Wiener).

Equations (Brynolfsson, "Deconvolution Networks", 2016; Xu et al., NIPS 2014):

    (1) y = x * k
    (3) x = F^-1( conj(F(k)) / (|F(k)|^2 + 1/SNR) ) * y = k† * y
    (5) x = k† * y = sum_j s_j * u_j * (v_j^T * y)       (k† = U diag(s) V^T)

Float in, float out: nothing here clips. FFT methods treat the image as periodic, which rings at
real borders; ``edge="taper"`` pads symmetrically by ``margin`` pixels and fades the padding to the
image mean with a cosine ramp before the FFT, then crops (``edge="periodic"`` skips this).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import ndimage
from skimage import restoration

logger = logging.getLogger(__name__)

Edge = Literal["taper", "periodic"]

__all__ = [
    "SeparableKernel",
    "psf_to_otf",
    "pad_taper",
    "wiener",
    "pseudo_inverse_kernel",
    "kernel_svd",
    "apply_separable",
    "apply_direct",
    "richardson_lucy",
    "skimage_wiener",
    "unsupervised_wiener",
]


def psf_to_otf(psf: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """FFT of ``psf`` zero-padded to ``shape`` with its centre moved to pixel (0, 0)."""
    padded = np.zeros(shape)
    padded[: psf.shape[0], : psf.shape[1]] = psf
    padded = np.roll(padded, (-(psf.shape[0] // 2), -(psf.shape[1] // 2)), axis=(0, 1))
    return np.fft.fft2(padded)


def default_margin(psf: np.ndarray) -> int:
    """Padding used for edge handling: three PSF widths, at least 16 pixels."""
    return max(16, 3 * max(psf.shape))


def pad_taper(image: np.ndarray, margin: int) -> np.ndarray:
    """Symmetric padding by ``margin`` whose outer part fades to the image mean (cosine ramp).

    The result is smooth across the periodic wrap, so FFT deconvolution does not ring at the borders.
    """
    padded = np.pad(np.asarray(image, dtype=np.float64), margin, mode="symmetric")
    ramp = 0.5 - 0.5 * np.cos(np.pi * np.arange(margin) / margin)  # 0 at the outer edge -> 1 near the image
    weights = [np.concatenate([ramp, np.ones(n), ramp[::-1]]) for n in image.shape]
    window = np.outer(weights[0], weights[1])
    mean = float(np.mean(image))
    return mean + (padded - mean) * window


def _with_edges(restore: Callable[[np.ndarray], np.ndarray], image: np.ndarray, edge: Edge, margin: int) -> np.ndarray:
    """Run ``restore`` on the tapered, padded image and crop back (or directly when periodic)."""
    if image.ndim != 2:
        raise ValueError(f"deblurring works on 2D images, got shape {image.shape}; run slice-wise for volumes")
    if edge == "periodic":
        return restore(np.asarray(image, dtype=np.float64))
    out = restore(pad_taper(image, margin))
    return out[margin : margin + image.shape[0], margin : margin + image.shape[1]]


def wiener(
    image: np.ndarray, psf: np.ndarray, nsr: float, *, edge: Edge = "taper", margin: int | None = None
) -> np.ndarray:
    """Wiener deconvolution with a constant noise-to-signal ratio (eq. 3), by FFT.

    ``X = conj(K) / (|K|^2 + nsr) * Y`` with ``K = F(psf)``; ``nsr = 1/SNR``.

    Args:
        image: blurred 2D image (any float range).
        psf: the blur kernel.
        nsr: noise-to-signal power ratio (> 0); larger = smoother.
        edge: ``"taper"`` (pad + taper, default) or ``"periodic"``.
        margin: padding in pixels; default ``default_margin(psf)``.
    """
    if nsr <= 0:
        raise ValueError(f"nsr must be > 0, got {nsr}")

    def restore(y: np.ndarray) -> np.ndarray:
        otf = psf_to_otf(psf, y.shape)
        return np.real(np.fft.ifft2(np.conj(otf) / (np.abs(otf) ** 2 + nsr) * np.fft.fft2(y)))

    return _with_edges(restore, image, edge, margin or default_margin(psf))


def pseudo_inverse_kernel(
    psf: np.ndarray, nsr: float, *, energy: float = 0.999, max_size: int = 121, grid: int = 512
) -> np.ndarray:
    """The spatial Wiener kernel k† of eq. 3, truncated to the smallest centred odd square keeping ``energy``.

    ``k† = F^-1( conj(K) / (|K|^2 + nsr) )`` is computed on a ``grid x grid`` FFT; the noise term makes it
    decay, so a compact support of ``s x s`` pixels holds ``energy`` of ``sum(k†^2)``. ``s`` is capped at
    ``max_size`` (Xu et al. use 121); when capped, the kept fraction is logged. The cut tail carries up to
    tens of percent of the kernel's sum (its DC gain), so a constant is added over the support to keep
    ``sum(k†) = 1 / (1 + nsr)``, the gain of the untruncated filter at frequency zero.

    Returns:
        k†, float64, shape ``(s, s)`` with ``s`` odd, centred like a PSF.
    """
    if not 0 < energy <= 1:
        raise ValueError(f"energy must be in (0, 1], got {energy}")
    if max_size % 2 == 0 or max_size > grid:
        raise ValueError(f"max_size must be odd and <= grid ({grid}), got {max_size}")
    otf = psf_to_otf(psf, (grid, grid))
    full = np.fft.fftshift(np.real(np.fft.ifft2(np.conj(otf) / (np.abs(otf) ** 2 + nsr))))
    centre = grid // 2
    total = float(np.sum(full**2))
    for size in range(1, max_size + 1, 2):
        h = size // 2
        crop = full[centre - h : centre + h + 1, centre - h : centre + h + 1]
        if np.sum(crop**2) >= energy * total:
            break
    else:
        logger.info(
            "k† capped at %d px keeps %.5f of its energy (asked %.5f)", max_size, np.sum(crop**2) / total, energy
        )
    # The cut-off tail is oscillatory but not zero-mean: restore the DC gain sum(k†) = 1 / (1 + nsr).
    return crop + (full.sum() - crop.sum()) / crop.size


@dataclass(frozen=True, eq=False)
class SeparableKernel:
    """Rank-r separation of a 2D kernel: ``kernel ~= sum_j s[j] * outer(u[j], v[j])``.

    Attributes:
        u: ``(r, height)`` column (y) factors. v: ``(r, width)`` row (x) factors. s: ``(r,)`` singular values.
        retained: fraction of ``sum(s^2)`` (the kernel's energy) kept by the ``r`` terms.
    """

    u: np.ndarray
    s: np.ndarray
    v: np.ndarray
    retained: float

    @property
    def rank(self) -> int:
        return len(self.s)

    def to_2d(self) -> np.ndarray:
        """The 2D kernel these factors represent."""
        return np.einsum("j,jy,jx->yx", self.s, self.u, self.v)


def kernel_svd(
    kernel: np.ndarray, energy: float = 0.9999, rank: int | None = None, keep_dc: bool = True
) -> SeparableKernel:
    """SVD of a 2D kernel with the rank chosen by retained energy (eq. 5).

    Args:
        kernel: 2D kernel (e.g. k†).
        energy: keep the smallest rank ``r`` with ``sum(s[:r]^2) >= energy * sum(s^2)``.
        rank: a fixed rank instead (overrides ``energy``).
        keep_dc: when ``r`` is below full rank, append one rank-1 box term (constant ``u``, ``v``) that
            restores ``sum(kernel)``: the dropped terms of k† can carry several percent of its DC gain,
            which costs decibels on natural images. The result then has ``r + 1`` terms.

    A kernel that is mirror-symmetric along an axis (k† of any centred symmetric PSF) has factors that are
    symmetric along it up to rounding; they are made exactly symmetric, which lets ``apply_separable``
    (scipy's ``correlate1d``) fold each 1-D kernel and halve its multiplications.
    """
    k = np.asarray(kernel, dtype=np.float64)
    u, s, vt = np.linalg.svd(k)
    cumulative = np.cumsum(s**2) / np.sum(s**2)
    r = rank if rank is not None else int(np.searchsorted(cumulative, energy - 1e-12) + 1)
    r = min(max(r, 1), len(s))
    u, s, v = u[:, :r].T, s[:r], vt[:r]
    if keep_dc and r < min(k.shape):
        dc_error = k.sum() - float(np.sum(s * u.sum(axis=1) * v.sum(axis=1)))
        ones_u, ones_v = np.full(k.shape[0], k.shape[0] ** -0.5), np.full(k.shape[1], k.shape[1] ** -0.5)
        u, v = np.vstack([u, ones_u]), np.vstack([v, ones_v])
        s = np.append(s, dc_error / np.sqrt(k.size))
    scale = 1e-12 * np.abs(k).max()
    if np.allclose(k, k[::-1], rtol=0, atol=scale):  # columns even -> every u_j even
        u = (u + u[:, ::-1]) / 2
    if np.allclose(k, k[:, ::-1], rtol=0, atol=scale):  # rows even -> every v_j even
        v = (v + v[:, ::-1]) / 2
    return SeparableKernel(u=u.copy(), s=s.copy(), v=v.copy(), retained=float(cumulative[r - 1]))


def apply_separable(image: np.ndarray, sep: SeparableKernel, mode: str = "reflect") -> np.ndarray:
    """``sum_j s_j * u_j * (v_j^T * y)`` (eq. 5): 2r one-dimensional convolutions instead of one 2D one.

    ``mode`` is scipy.ndimage's boundary rule (``"reflect"`` = symmetric extension). ``s_j`` is folded into
    the column kernel and both passes write into reused buffers, so each term costs two 1-D passes and one sum.
    """
    y = np.asarray(image, dtype=np.float64)
    out, rows, cols = np.zeros_like(y), np.empty_like(y), np.empty_like(y)
    for s_j, u_j, v_j in zip(sep.s, sep.u, sep.v):
        ndimage.convolve1d(y, v_j, axis=1, mode=mode, output=rows)
        ndimage.convolve1d(rows, s_j * u_j, axis=0, mode=mode, output=cols)
        out += cols
    return out


def apply_direct(image: np.ndarray, kernel: np.ndarray, mode: str = "reflect") -> np.ndarray:
    """Direct (spatial) 2D convolution ``kernel * image``: the cost the separation avoids."""
    return ndimage.convolve(np.asarray(image, dtype=np.float64), kernel, mode=mode)


def richardson_lucy(
    image: np.ndarray, psf: np.ndarray, iterations: int = 30, *, edge: Edge = "taper", margin: int | None = None
) -> np.ndarray:
    """Richardson-Lucy (scikit-image, ``clip=False``) with the same edge handling as ``wiener``."""
    return _with_edges(
        lambda y: restoration.richardson_lucy(y, psf, num_iter=iterations, clip=False, filter_epsilon=1e-6),
        image,
        edge,
        margin or default_margin(psf),
    )


def skimage_wiener(
    image: np.ndarray, psf: np.ndarray, balance: float, *, edge: Edge = "taper", margin: int | None = None
) -> np.ndarray:
    """scikit-image's Wiener-Hunt deconvolution (Laplacian regulariser), ``clip=False``, with edge handling."""
    return _with_edges(
        lambda y: restoration.wiener(y, psf, balance, clip=False), image, edge, margin or default_margin(psf)
    )


def unsupervised_wiener(
    image: np.ndarray, psf: np.ndarray, *, seed: int = 0, edge: Edge = "taper", margin: int | None = None
) -> np.ndarray:
    """scikit-image's unsupervised Wiener-Hunt (Gibbs-sampled regularisation), ``clip=False``, with edges."""
    return _with_edges(
        lambda y: restoration.unsupervised_wiener(y, psf, clip=False, rng=seed)[0],
        image,
        edge,
        margin or default_margin(psf),
    )
