"""IDX reader: round trip of written files (raw and gzip), clear errors, and the real MNIST files."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from deconvseg.pipeline.errors import InputError
from deconvseg.pipeline.autoencoding.mnist import IMAGES_MAGIC, LABELS_MAGIC, read_idx, read_mnist
from tests.conftest import shared_path


def idx_bytes(array: np.ndarray, magic: int) -> bytes:
    header = magic.to_bytes(4, "big") + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_split(folder, images: np.ndarray, labels: np.ndarray, compress: bool) -> None:
    for stem, data in (
        ("t10k-images-idx3-ubyte", idx_bytes(images, IMAGES_MAGIC)),
        ("t10k-labels-idx1-ubyte", idx_bytes(labels, LABELS_MAGIC)),
    ):
        if compress:
            (folder / f"{stem}.gz").write_bytes(gzip.compress(data))
        else:
            (folder / stem).write_bytes(data)


@pytest.mark.parametrize("compress", [True, False])
def test_written_split_reads_back_exactly(tmp_path, rng, compress):
    images = rng.integers(0, 256, size=(7, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=7, dtype=np.uint8)
    write_split(tmp_path, images, labels, compress)
    split = read_mnist(tmp_path, "test")
    np.testing.assert_array_equal(split.images, images)
    np.testing.assert_array_equal(split.labels, labels)
    floats = split.as_float()
    assert floats.shape == (7, 1, 28, 28) and floats.dtype == np.float32
    assert np.isclose(floats.max(), images.max() / 255.0)


def test_truncated_file_is_rejected_with_a_clear_error(tmp_path, rng):
    data = idx_bytes(rng.integers(0, 256, size=(5, 28, 28)), IMAGES_MAGIC)
    path = tmp_path / "t10k-images-idx3-ubyte"
    path.write_bytes(data[:-100])
    with pytest.raises(InputError, match=r"t10k-images-idx3-ubyte: truncated .* 3920 bytes .* found 3820"):
        read_idx(path, IMAGES_MAGIC)


def test_truncated_gzip_stream_is_rejected(tmp_path, rng):
    path = tmp_path / "x.gz"
    path.write_bytes(gzip.compress(idx_bytes(rng.integers(0, 256, size=(50, 28, 28)), IMAGES_MAGIC))[:200])
    with pytest.raises(InputError, match="damaged gzip stream"):
        read_idx(path)


def test_wrong_magic_and_swapped_files_are_rejected(tmp_path):
    bad = tmp_path / "bad"
    bad.write_bytes(b"\x00\x00\x0d\x03" + bytes(20))
    with pytest.raises(InputError, match="not an unsigned-byte IDX file"):
        read_idx(bad)
    labels = tmp_path / "labels"
    labels.write_bytes(idx_bytes(np.zeros(3), LABELS_MAGIC))
    with pytest.raises(InputError, match="expected 0x00000803"):
        read_idx(labels, IMAGES_MAGIC)


def test_missing_file_and_unknown_split(tmp_path):
    with pytest.raises(InputError, match="MNIST file not found"):
        read_mnist(tmp_path, "train")
    with pytest.raises(InputError, match="unknown MNIST split"):
        read_mnist(tmp_path, "validation")


def test_real_mnist_test_split():
    split = read_mnist(shared_path("mnist"), "test")
    assert split.images.shape == (10000, 28, 28)
    assert np.bincount(split.labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
