"""Read MNIST from its original IDX files (gzip-compressed or raw), without downloading anything.

IDX layout (LeCun et al., http://yann.lecun.com/exdb/mnist/): a big-endian 32-bit magic number
``0x00000803`` (images, 3 dimensions) or ``0x00000801`` (labels, 1 dimension) -- the third byte
is the element type (``0x08`` = unsigned byte), the fourth the number of dimensions -- then one
big-endian 32-bit size per dimension, then the ``uint8`` data in C order.
"""

from __future__ import annotations

import gzip
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deconvseg.pipeline.errors import InputError

log = logging.getLogger(__name__)

IMAGES_MAGIC = 0x00000803
LABELS_MAGIC = 0x00000801
SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


@dataclass(frozen=True)
class MnistSplit:
    """One MNIST split.

    Attributes:
        images: ``uint8`` array ``(n, 28, 28)``, values 0..255.
        labels: ``uint8`` array ``(n,)``, digits 0..9.
    """

    images: np.ndarray
    labels: np.ndarray

    def as_float(self) -> np.ndarray:
        """Images as ``float32`` in [0, 1] with a channel axis, ``(n, 1, 28, 28)`` (a new array)."""
        return (self.images.astype(np.float32) / 255.0)[:, None]


def _read_bytes(path: Path) -> bytes:
    """The file's content, gunzipped when it starts with the gzip signature."""
    raw = path.read_bytes()
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gzip.decompress(raw)
    except (EOFError, OSError) as err:
        raise InputError(path, f"damaged gzip stream ({err})", "copy the file again from its source") from err


def read_idx(path: str | Path, expected_magic: int | None = None) -> np.ndarray:
    """Read one IDX file of unsigned bytes.

    Args:
        path: ``.gz`` or raw IDX file.
        expected_magic: ``IMAGES_MAGIC`` or ``LABELS_MAGIC`` to insist on; ``None`` accepts any
            ``uint8`` IDX file.

    Returns:
        A ``uint8`` array with the dimensions stored in the header.

    Raises:
        InputError: missing file, wrong magic number, or fewer data bytes than the header promises.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "IDX file not found", "check the path (MNIST lives in shared/data/mnist)")
    data = _read_bytes(path)
    if len(data) < 4:
        raise InputError(path, f"file is {len(data)} bytes, too short for an IDX header", "copy the file again")
    magic = int.from_bytes(data[:4], "big")
    if magic >> 16 != 0 or (magic >> 8) & 0xFF != 0x08 or not 1 <= magic & 0xFF <= 4:
        raise InputError(path, f"magic number 0x{magic:08x} is not an unsigned-byte IDX file", "pass an MNIST IDX file")
    if expected_magic is not None and magic != expected_magic:
        raise InputError(
            path,
            f"magic number 0x{magic:08x}, expected 0x{expected_magic:08x}",
            "check images and labels are not swapped",
        )
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(data) < header:
        raise InputError(path, f"truncated header ({len(data)} of {header} bytes)", "copy the file again")
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(dims))
    if len(data) - header != expected:
        raise InputError(
            path,
            f"truncated or padded data: header promises {expected} bytes for shape {dims}, found {len(data) - header}",
            "copy the file again from its source",
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims).copy()


def _find(folder: Path, stem: str) -> Path:
    for name in (stem + ".gz", stem, stem.replace("-idx", ".idx")):
        if (folder / name).is_file():
            return folder / name
    raise InputError(folder / (stem + ".gz"), "MNIST file not found", f"put {stem}(.gz) in {folder}")


def read_mnist(folder: str | Path, split: str = "train") -> MnistSplit:
    """Read the images and labels of one split from a folder of IDX files.

    Args:
        folder: folder holding ``train-images-idx3-ubyte[.gz]`` etc.
        split: ``"train"`` (60,000 images) or ``"test"`` (10,000).

    Returns:
        The split's images and labels.

    Raises:
        InputError: unknown split, missing/damaged files, or image and label counts that differ.
    """
    folder = Path(folder)
    if split not in SPLIT_FILES:
        raise InputError(folder, f"unknown MNIST split {split!r}", f"use one of {sorted(SPLIT_FILES)}")
    image_path, label_path = (_find(folder, stem) for stem in SPLIT_FILES[split])
    images = read_idx(image_path, IMAGES_MAGIC)
    labels = read_idx(label_path, LABELS_MAGIC)
    if len(images) != len(labels):
        raise InputError(label_path, f"{len(labels)} labels for {len(images)} images", "use files of the same split")
    log.info("read MNIST %s: %d images of %s", split, len(images), images.shape[1:])
    return MnistSplit(images=images, labels=labels)
