"""PSFs, degradation, Wiener / k† / SVD separation and the baselines of deconvseg.pipeline.deblur.filters, and the deblur stage."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from scipy.signal import fftconvolve

from deconvseg.pipeline.deblur import filters as D
from deconvseg.pipeline.deblur.stage import DeblurConfig, deblur_image, deblur_volume
from deconvseg.pipeline.deblur.degrade import Degradation, xu_degradation
from deconvseg.pipeline.errors import ConfigError
from deconvseg.pipeline.deblur.psf import disk_psf, gaussian_psf, motion_psf, parse_psf, psf_from_array
from deconvseg.pipeline.volume import Volume


def sharp_image(rng: np.random.Generator, shape: tuple[int, int] = (96, 112)) -> np.ndarray:
    """Piecewise-constant shapes plus gentle texture, in [0.1, 0.9], not periodic across its borders."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    image = 0.2 + 0.3 * (xx / shape[1])  # a ramp: the periodic wrap is a jump
    for _ in range(6):
        cy, cx, r = rng.integers(10, shape[0] - 10), rng.integers(10, shape[1] - 10), rng.integers(5, 15)
        image[(yy - cy) ** 2 + (xx - cx) ** 2 < r**2] = rng.uniform(0.1, 0.9)
    image += 0.03 * ndimage.gaussian_filter(rng.standard_normal(shape), 1.0)
    return np.clip(image, 0.1, 0.9)


@pytest.fixture
def blurred_pair(rng):
    """(degraded, reference, psf): disk r=3 blur (valid), noise variance 1e-6, no saturation/JPEG."""
    degrade = Degradation(disk_psf(3), noise_var=1e-6, saturation=None, jpeg_quality=None)
    degraded, reference = degrade(sharp_image(rng), rng)
    return degraded, reference, degrade.psf


def rmse(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sqrt(np.mean((a - b) ** 2)))


@pytest.mark.parametrize("psf", [gaussian_psf(1.5), disk_psf(3.5), motion_psf(9, 30), psf_from_array(np.ones((3, 5)))])
def test_psfs_are_normalised_odd_and_non_negative(psf):
    assert psf.sum() == pytest.approx(1.0)
    assert psf.shape[0] % 2 == 1 and psf.shape[1] % 2 == 1
    assert psf.min() >= 0


def test_psf_geometry():
    disk = disk_psf(7)
    assert disk.shape == (15, 15) and np.allclose(disk, disk.T) and np.allclose(disk, disk[::-1])
    line = motion_psf(11, 0)
    rows = np.flatnonzero(line.sum(axis=1) > 1e-9)
    assert len(rows) == 1 and np.count_nonzero(line[rows[0]] > 1e-9) >= 11  # horizontal, ~11 px long
    assert np.allclose(motion_psf(11, 90), line.T)


def test_psf_parsing_and_refusals():
    assert np.allclose(parse_psf("disk:7"), disk_psf(7))
    assert np.allclose(parse_psf("motion:9:30"), motion_psf(9, 30))
    for bad in ("box:3", "disk", "gaussian:x", "disk:-2"):
        with pytest.raises(ConfigError, match="disk:7"):
            parse_psf(bad)
    for bad in (np.ones((4, 3)), -np.ones((3, 3)), np.zeros((3, 3))):
        with pytest.raises(ValueError):
            psf_from_array(bad)


def test_xu_degradation(rng):
    image = sharp_image(rng, (64, 80))
    degraded, reference = xu_degradation()(image, rng)
    assert degraded.shape == reference.shape == (50, 66)  # valid blur with a 15x15 disk
    assert degraded.min() >= 0 and degraded.max() <= 1
    assert np.allclose(reference, np.clip(1.3 * image[7:-7, 7:-7], 0, 1))
    assert not np.allclose(degraded, np.round(degraded * 255) / 255 * 0)  # something survived
    # JPEG and noise make it differ from the noiseless saturated blur, but not by much
    clean = np.clip(1.3 * fftconvolve(image, disk_psf(7), mode="valid"), 0, 1)
    assert 0.005 < rmse(degraded, clean) < 0.06


def test_pseudo_inverse_kernel_times_psf_is_near_delta():
    psf, nsr = gaussian_psf(1.5), 1e-3
    kdag = D.pseudo_inverse_kernel(psf, nsr, energy=0.9999)
    product = fftconvolve(kdag, psf)
    centre = tuple(np.array(product.shape) // 2)
    assert np.unravel_index(np.argmax(product), product.shape) == centre  # peak at the centre
    assert product[centre] > 1.5 * np.sort(product.ravel())[-2]  # a clear single peak
    window = product[centre[0] - 1 : centre[0] + 2, centre[1] - 1 : centre[1] + 2]
    assert np.sum(window**2) / np.sum(product**2) > 0.9  # energy concentrated around the centre
    assert product.sum() == pytest.approx(1 / (1 + nsr), rel=1e-6)  # DC gain kept after truncation


def test_pseudo_inverse_support_keeps_stated_energy():
    psf, nsr, grid = disk_psf(5), 0.01, 512
    otf = D.psf_to_otf(psf, (grid, grid))
    full = np.fft.fftshift(np.real(np.fft.ifft2(np.conj(otf) / (np.abs(otf) ** 2 + nsr))))  # eq. 3, untruncated
    total, c = np.sum(full**2), grid // 2
    for energy in (0.99, 0.999):
        kdag = D.pseudo_inverse_kernel(psf, nsr, energy=energy, max_size=201, grid=grid)
        h = kdag.shape[0] // 2
        assert kdag.shape[0] % 2 == 1 and kdag.shape[0] < 201
        assert kdag.sum() == pytest.approx(full.sum(), rel=1e-9)  # DC gain of eq. 3 kept
        kept = np.sum(full[c - h : c + h + 1, c - h : c + h + 1] ** 2) / total
        smaller = np.sum(full[c - h + 1 : c + h, c - h + 1 : c + h] ** 2) / total
        assert kept >= energy > smaller  # the smallest square that keeps the stated energy


def test_separable_at_full_rank_equals_2d_kernel(rng):
    kdag = D.pseudo_inverse_kernel(disk_psf(3), 0.01, energy=0.999)
    full = D.kernel_svd(kdag, rank=kdag.shape[0])
    assert full.rank == kdag.shape[0]
    assert np.allclose(full.to_2d(), kdag, atol=1e-12)
    image = rng.random((40, 50))
    assert np.allclose(D.apply_separable(image, full), D.apply_direct(image, kdag), atol=1e-10)


def test_symmetric_kernels_get_exactly_symmetric_factors():
    kdag = D.pseudo_inverse_kernel(disk_psf(3), 0.01, energy=0.999)  # mirror-symmetric along both axes
    sep = D.kernel_svd(kdag, energy=0.999, keep_dc=False)
    assert np.array_equal(sep.u, sep.u[:, ::-1]) and np.array_equal(sep.v, sep.v[:, ::-1])
    u, s, vt = np.linalg.svd(kdag)
    assert np.allclose(sep.to_2d(), (u[:, : sep.rank] * s[: sep.rank]) @ vt[: sep.rank], atol=1e-12)
    skew = D.pseudo_inverse_kernel(motion_psf(9, 30), 0.01, energy=0.999)  # no mirror symmetry
    plain = D.kernel_svd(skew, energy=0.999)
    assert not np.array_equal(plain.v, plain.v[:, ::-1])
    u, s, vt = np.linalg.svd(skew)
    assert np.allclose(plain.u[:-1], u[:, : plain.rank - 1].T) and np.allclose(plain.v[:-1], vt[: plain.rank - 1])


def test_rank_selection_keeps_stated_energy():
    kdag = D.pseudo_inverse_kernel(disk_psf(7), 0.03, energy=0.9999)
    s = np.linalg.svd(kdag, compute_uv=False)
    share = np.cumsum(s**2) / np.sum(s**2)
    for energy in (0.9, 0.99, 0.999, 0.9999):
        sep = D.kernel_svd(kdag, energy=energy)
        r = sep.rank - 1  # the last term restores the DC gain
        assert sep.retained >= energy and share[r - 1] >= energy
        assert r == 1 or share[r - 2] < energy  # the smallest such rank
        assert sep.to_2d().sum() == pytest.approx(kdag.sum(), rel=1e-9)
        assert r < kdag.shape[0] // 2


def test_tapered_wiener_beats_periodic_on_real_borders(blurred_pair):
    degraded, reference, psf = blurred_pair
    tapered = D.wiener(degraded, psf, 1e-3)
    periodic = D.wiener(degraded, psf, 1e-3, edge="periodic")
    assert rmse(tapered, reference) < 0.8 * rmse(periodic, reference)


@pytest.mark.parametrize("method", ["wiener", "svd", "direct2d", "rl", "skimage_wiener", "unsupervised_wiener"])
def test_each_method_restores_better_than_blurred(blurred_pair, method):
    degraded, reference, psf = blurred_pair
    before = degraded.copy()
    config = DeblurConfig(nsr=3e-3, rl_iterations=30, balance=3e-3)
    restored = deblur_image(degraded, psf, method, config)
    assert restored.shape == degraded.shape and restored.dtype == np.float64
    assert np.array_equal(degraded, before)  # input untouched
    assert rmse(restored, reference) < 0.8 * rmse(degraded, reference)


def test_svd_matches_fft_wiener(blurred_pair):
    degraded, _, psf = blurred_pair
    config = DeblurConfig(nsr=0.01)
    fft, sep = deblur_image(degraded, psf, "wiener", config), deblur_image(degraded, psf, "svd", config)
    inner = (slice(10, -10), slice(10, -10))
    assert rmse(fft[inner], sep[inner]) < 0.01


def test_no_silent_clipping():
    step = np.zeros((64, 64))
    step[:, 32:] = 1.0
    blurred = ndimage.convolve(step, disk_psf(3), mode="reflect")
    restored = D.wiener(blurred, disk_psf(3), 1e-4)
    assert restored.max() > 1.0 and restored.min() < 0.0  # ringing overshoot is returned, not clipped


def test_deblur_volume_keeps_geometry_and_restores(rng):
    psf = gaussian_psf(1.5)
    sharp = np.stack([sharp_image(rng, (48, 56)) for _ in range(3)]) * 1000 - 200  # CT-like units
    blurred = np.stack([ndimage.convolve(s, psf, mode="reflect") for s in sharp])
    volume = Volume(blurred.astype(np.float32), spacing=(0.8, 0.8, 3.0), origin=(1, 2, 3), metadata={"modality": "CT"})
    out = deblur_volume(volume, "gaussian:1.5", "svd", DeblurConfig(nsr=1e-3))
    assert out.shape == volume.shape and out.array.dtype == np.float32
    assert out.spacing == volume.spacing and out.origin == volume.origin and np.allclose(out.direction, volume.direction)
    assert out.metadata["modality"] == "CT" and out.metadata["deblur"] == {"method": "svd", "psf": "gaussian:1.5"}
    assert rmse(out.array, sharp) < 0.8 * rmse(blurred, sharp)
    with pytest.raises(ValueError):
        deblur_volume(Volume(np.zeros((2, 8, 8), np.uint8), kind="label"), psf)
