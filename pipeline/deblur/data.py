"""Images for training and evaluating deblurring: scikit-image's bundled photographs (work offline).

The held-out set is FIXED and never used for training or tuning: ``camera``, ``astronaut`` (grey),
``coins``, ``moon``, ``text``. Training draws patches from the other bundled natural/microscopy images.
"""

from __future__ import annotations

import numpy as np
from skimage import color, data

__all__ = ["HELD_OUT", "TRAINING", "load_grey"]

HELD_OUT: tuple[str, ...] = ("camera", "astronaut", "coins", "moon", "text")
TRAINING: tuple[str, ...] = (
    "brick",
    "grass",
    "gravel",
    "chelsea",
    "coffee",
    "cell",
    "hubble_deep_field",
    "immunohistochemistry",
    "page",
    "retina",
    "rocket",
    "stereo_motorcycle",
    "colorwheel",
    "logo",
)


def load_grey(name: str) -> np.ndarray:
    """A bundled scikit-image image as a float64 grey image in [0, 1].

    RGB(A) images go through ``skimage.color.rgb2gray`` (alpha dropped); ``stereo_motorcycle`` gives its
    left view.

    Raises:
        ValueError: ``name`` is not one of ``HELD_OUT`` or ``TRAINING``.
    """
    if name not in HELD_OUT + TRAINING:
        raise ValueError(f"unknown deblur image '{name}'; choose from {HELD_OUT + TRAINING}")
    image = getattr(data, name)()
    if isinstance(image, tuple):
        image = image[0]
    image = np.asarray(image)
    if image.ndim == 3:
        image = color.rgb2gray(image[..., :3])
    elif image.dtype == np.uint8:
        image = image / 255.0
    return np.asarray(image, dtype=np.float64)
