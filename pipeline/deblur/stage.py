"""The deblur stage: one entry point per input kind, for the CLI, the flows and the segmentation flow.

``deblur_image(image, psf, method, config)`` restores one 2D float image; ``deblur_volume(volume, psf,
method, config)`` restores every axial slice (``array[z]``) of a ``Volume`` and keeps its geometry.
Methods: ``wiener`` (FFT, eq. 3, tapered edges), ``svd`` (separable k†, eq. 5), ``direct2d`` (k† by
direct 2D convolution), ``rl`` (Richardson-Lucy), ``skimage_wiener``, ``unsupervised_wiener`` and
``dcnn`` (Xu et al.; needs weights trained for the same PSF). The PSF is given in pixels of a slice.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Literal, cast

import numpy as np

from deconvseg.models import WEIGHTS_ROOT as SHIPPED
from deconvseg.pipeline.config import Settings
from deconvseg.pipeline.deblur import filters as classical
from deconvseg.pipeline.deblur.psf import parse_psf, psf_from_array
from deconvseg.pipeline.errors import ConfigError, DeconvsegError, InputError
from deconvseg.pipeline.volume import Volume

logger = logging.getLogger(__name__)

Method = Literal["wiener", "svd", "direct2d", "rl", "skimage_wiener", "unsupervised_wiener", "dcnn"]
WEIGHTS_ROOT = SHIPPED / "deblur"

__all__ = ["DeblurConfig", "Method", "make_restorer", "deblur_image", "deblur_volume", "find_dcnn_weights"]


class DeblurConfig(Settings):
    """Deblur settings (tuned on training images for disk r=7 + noise 0.0005); ``configs/deblur.yaml`` overrides."""

    psf: str = "disk:7"
    method: Method = "wiener"
    nsr: float = 0.03
    support_energy: float = 0.99999
    max_support: int = 121
    rank_energy: float = 0.9999
    rl_iterations: int = 20
    balance: float = 0.03
    weights: str | None = None
    threads: int = 2


def find_dcnn_weights(psf: np.ndarray, root: Path = WEIGHTS_ROOT) -> Path:
    """The bundled DCNN checkpoint folder trained for ``psf`` (the DCNN is specific to its blur kernel).

    Raises:
        ConfigError: no checkpoint under ``root`` was trained for this PSF.
    """
    import json

    from deconvseg.pipeline.deblur.degrade import DEGRADATIONS

    for folder in sorted(p.parent for p in root.glob("*/model.json")):
        trained = DEGRADATIONS[json.loads((folder / "model.json").read_text())["degradation"]]().psf
        if trained.shape == psf.shape and np.allclose(trained, psf):
            return folder
    raise ConfigError(
        f"method dcnn: no weights under {root} were trained for this PSF; "
        "train them (deconvseg deblur-train) or use --method wiener"
    )


def make_restorer(
    psf: np.ndarray, method: Method, config: DeblurConfig = DeblurConfig()
) -> Callable[[np.ndarray], np.ndarray]:
    """A function ``image -> restored image`` with everything PSF-dependent (k†, SVD, network) built once."""
    if method in ("svd", "direct2d"):
        kdag = classical.pseudo_inverse_kernel(
            psf, config.nsr, energy=config.support_energy, max_size=config.max_support
        )
        if method == "direct2d":
            return lambda image: classical.apply_direct(image, kdag)
        sep = classical.kernel_svd(kdag, energy=config.rank_energy)
        logger.info("k† %s, rank %d keeps %.5f of its energy", kdag.shape, sep.rank, sep.retained)
        return lambda image: classical.apply_separable(image, sep)
    if method == "dcnn":
        from deconvseg.models.deblur_cnn import DeblurCNN, deblur_cnn_image
        from deconvseg.pipeline.checkpoints import load_checkpoint

        network, _ = load_checkpoint(config.weights or find_dcnn_weights(psf))
        model = cast(DeblurCNN, network)  # a deblur checkpoint holds a DeblurCNN
        return lambda image: deblur_cnn_image(model, image)
    restorers: dict[str, Callable[[np.ndarray], np.ndarray]] = {
        "wiener": lambda image: classical.wiener(image, psf, config.nsr),
        "rl": lambda image: classical.richardson_lucy(image, psf, config.rl_iterations),
        "skimage_wiener": lambda image: classical.skimage_wiener(image, psf, config.balance),
        "unsupervised_wiener": lambda image: classical.unsupervised_wiener(image, psf),
    }
    if method not in restorers:
        raise ConfigError(
            f"method '{method}': unknown; use one of wiener, svd, direct2d, rl, skimage_wiener, "
            "unsupervised_wiener, dcnn"
        )
    return restorers[method]


def deblur_image(
    image: np.ndarray, psf: np.ndarray, method: Method = "wiener", config: DeblurConfig = DeblurConfig()
) -> np.ndarray:
    """Restore a 2D float image (intensities in [0, 1] for ``rl`` and ``dcnn``); float64 out, unclipped."""
    image = np.asarray(image, dtype=np.float64)
    if image.ndim != 2:
        raise ValueError(f"deblur_image needs a 2D image, got shape {image.shape}; use deblur_volume for 3D")
    return make_restorer(psf, method, config)(image)


def deblur_volume(
    volume: Volume, psf: np.ndarray | str, method: Method = "wiener", config: DeblurConfig = DeblurConfig()
) -> Volume:
    """Restore every axial slice ``array[z]`` of an image ``Volume``; same grid and metadata, float32 voxels.

    ``psf`` is an array or its spelling (``"disk:7"``, see ``deconvseg.pipeline.deblur.psf.parse_psf``), in
    slice pixels.

    Intensities are mapped to [0, 1] by the volume's 0.5/99.5 percentiles for the restoration (``rl`` and
    ``dcnn`` assume that range) and mapped back afterwards, so the output stays in the input's units.
    """
    if volume.kind != "image":
        raise ValueError("deblur_volume restores intensity images, not label maps")
    spec = psf if isinstance(psf, str) else f"array{tuple(np.shape(psf))}"
    restore = make_restorer(parse_psf(psf) if isinstance(psf, str) else psf_from_array(psf), method, config)
    array = volume.array.astype(np.float64)
    lo, hi = np.percentile(array, [0.5, 99.5])
    scale = float(hi - lo) or 1.0
    out = np.empty(array.shape, dtype=np.float32)
    for z in range(array.shape[0]):
        out[z] = restore((array[z] - lo) / scale) * scale + lo
    return replace(volume, array=out, metadata={**volume.metadata, "deblur": {"method": method, "psf": spec}})


def deblur_file(src: str | Path, dst: str | Path, config: DeblurConfig = DeblurConfig()) -> Path:
    """Deblur one input (PNG/TIFF image, NIfTI/NRRD/MHA volume or DICOM folder) into ``dst``, atomically.

    2D images keep their bit depth for PNG output (see ``deconvseg.pipeline.deblur.image2d``); volumes are
    restored slice by slice with ``deblur_volume`` and written with ``deconvseg.pipeline.io.volumes.write_volume``
    (``dst`` a volume suffix).

    Raises:
        InputError: unreadable input, or an output suffix that does not fit the input kind.
    """
    from deconvseg.pipeline.deblur.image2d import IMAGE_SUFFIXES, read_image_2d, write_image_2d
    from deconvseg.pipeline.io.volumes import read_volume, write_volume

    src, dst = Path(src), Path(dst)
    if src.suffix.lower() in IMAGE_SUFFIXES:
        image, dtype = read_image_2d(src)
        try:
            restored = deblur_image(image, parse_psf(config.psf), config.method, config)
        except DeconvsegError:
            raise
        except ValueError as err:  # an image the restoration cannot take (e.g. smaller than the PSF)
            raise InputError(src, str(err), "check the PSF and method") from err
        return write_image_2d(dst, restored, dtype=dtype)
    if dst.suffix.lower() in IMAGE_SUFFIXES:
        raise InputError(dst, "a volume cannot be written as a 2D image", "name the output .nii.gz, .nrrd or .mha")
    volume = read_volume(src)
    return write_volume(deblur_volume(volume, config.psf, config.method, config), dst)
