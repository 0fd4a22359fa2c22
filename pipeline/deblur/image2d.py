"""Read and write single 2D images (PNG, TIFF) as float arrays, for the deblur stage.

Reading maps integer pixels to [0, 1] (``value / dtype max``) and keeps float pixels as they are.
Writing a TIFF keeps float32 values unchanged; writing a PNG must quantise to 8 or 16 bits, so values
outside [0, 1] are clipped there, explicitly and with a log line that counts them. Writes are atomic.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from deconvseg.pipeline.errors import InputError
from deconvseg.pipeline.files import atomic_file

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".tif", ".tiff")

__all__ = ["IMAGE_SUFFIXES", "read_image_2d", "write_image_2d"]


def read_image_2d(path: str | Path) -> tuple[np.ndarray, str]:
    """A grey 2D image as float64 and its stored dtype name (``"uint8"``, ``"uint16"``, ``"float32"``, ...).

    RGB(A) images are converted to grey with ITU-R 601 weights (``skimage.color.rgb2gray``).

    Raises:
        InputError: missing file, unreadable image, or not a 2D (grey/RGB) image.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "no such file", "check the path")
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            array = tifffile.imread(path)
        else:
            with Image.open(path) as image:
                array = np.asarray(image)
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise InputError(path, f"unreadable image ({err.__class__.__name__})", "re-export it as PNG or TIFF") from err
    dtype = str(array.dtype)
    if array.ndim == 3 and array.shape[-1] in (3, 4):
        from skimage.color import rgb2gray

        array = rgb2gray(array[..., :3])  # already scaled to [0, 1]
    elif array.ndim != 2:
        raise InputError(path, f"not a 2D image (shape {array.shape})", "pass a volume file (NIfTI/NRRD/MHA) instead")
    elif np.issubdtype(array.dtype, np.integer):
        array = array / float(np.iinfo(array.dtype).max)
    return np.asarray(array, dtype=np.float64), dtype


def write_image_2d(path: str | Path, image: np.ndarray, dtype: str = "uint8") -> Path:
    """Write a float image: TIFF as float32 (unchanged); PNG quantised to ``dtype`` (``uint8``/``uint16``).

    PNG values outside [0, 1] are clipped (logged with their count). Written atomically.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in IMAGE_SUFFIXES:
        raise InputError(path, f"unsupported output suffix '{suffix}'", "use .png, .tif or .tiff")
    with atomic_file(path) as tmp:
        if suffix == ".png":
            bits = np.uint16 if dtype == "uint16" else np.uint8
            outside = int(np.count_nonzero((image < 0) | (image > 1)))
            if outside:
                logger.warning("%s: %d pixels outside [0, 1] clipped for PNG; write .tif to keep them", path, outside)
            scaled = np.round(np.clip(image, 0.0, 1.0) * np.iinfo(bits).max).astype(bits)
            Image.fromarray(scaled).save(tmp, format="PNG")
        else:
            import tifffile

            tifffile.imwrite(tmp, np.asarray(image, dtype=np.float32))
    return path
