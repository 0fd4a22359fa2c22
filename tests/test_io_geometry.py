"""Geometry validated at read for every format, corrupt DICOM slices named, label values checked (issue 17)."""

from __future__ import annotations

import struct
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from tests.test_io_dicom import write_series
from tests.test_io_errors import refused

_ARRAY = np.zeros((4, 5, 6), np.float32)


def _nifti(tmp_path: Path, name: str, field: str, index: int, value: float) -> Path:
    """A valid NIfTI whose raw header field ``dim``/``pixdim`` [index] is overwritten (nibabel would fix it)."""
    base = tmp_path / "base.nii"
    nib.save(nib.Nifti1Image(_ARRAY, np.eye(4)), base)
    raw = bytearray(base.read_bytes())
    offset, fmt = (40 + 2 * index, "<h") if field == "dim" else (76 + 4 * index, "<f")
    struct.pack_into(fmt, raw, offset, value)
    path = tmp_path / name
    path.write_bytes(bytes(raw))
    base.unlink()
    return path


def _mha(tmp_path: Path, name: str, old: bytes, new: bytes) -> Path:
    path = tmp_path / name
    sitk.WriteImage(sitk.GetImageFromArray(_ARRAY), str(path))
    text = path.read_bytes()
    assert old in text
    path.write_bytes(text.replace(old, new))
    return path


@pytest.mark.parametrize("field, index, value, pattern", [
    ("dim", 3, 0, r"zero-size axis in image size \[4, 5, 0\] \(NIfTI dim\[3\] is 0\)"),
    ("pixdim", 2, 0.0, r"zero or negative voxel spacing \(NIfTI pixdim\) \[1.0, 0.0, 1.0\]"),
    ("pixdim", 1, -2.0, r"zero or negative voxel spacing \(NIfTI pixdim\) \[-2.0, 1.0, 1.0\]"),
    ("pixdim", 3, float("nan"), r"voxel spacing \(NIfTI pixdim\) \[1.0, 1.0, nan\] is not a finite number"),
])
def test_nifti_header_geometry_is_refused_not_repaired(tmp_path, field, index, value, pattern):
    refused(_nifti(tmp_path, "bad.nii", field, index, value), pattern)


@pytest.mark.parametrize("old, new, pattern", [
    (b"ElementSpacing = 1 1 1", b"ElementSpacing = 1 0 1", r"zero or negative voxel spacing \(MetaImage ElementSpacing\)"),
    (b"ElementSpacing = 1 1 1", b"ElementSpacing = 1 nan 1", r"\[1.0, nan, 1.0\] is not a finite number"),
    (b"TransformMatrix = 1 0 0 0 1 0 0 0 1", b"TransformMatrix = 1 0 0 1 0 0 0 0 1", r"singular direction matrix"),
    (b"TransformMatrix = 1 0 0 0 1 0 0 0 1", b"TransformMatrix = 1 0 0 0.5 0.5 0 0 0 1", r"not orthonormal"),
    (b"DimSize = 6 5 4", b"DimSize = 6 0 4", r"zero-size axis in image size \[6, 0, 4\]"),
])
def test_metaimage_geometry_has_its_own_reason(tmp_path, old, new, pattern):
    message = refused(_mha(tmp_path, "bad.mha", old, new), pattern)
    assert "corrupt" not in message


def test_nrrd_zero_spacing_is_refused(tmp_path):
    path = tmp_path / "v.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(_ARRAY), str(path), useCompression=False)
    raw = path.read_bytes()
    path.write_bytes(raw.replace(b"space directions: (1,0,0) (0,1,0) (0,0,1)", b"space directions: (1,0,0) (0,0,0) (0,0,1)"))
    assert path.read_bytes() != raw
    refused(path, r"zero or negative voxel spacing \[1.0, 0.0, 1.0\]")


@pytest.mark.parametrize("kwargs, pattern", [
    ({"spacing": (0.0, 0.9, 2.0)}, r"slice\d+\.dcm: zero or negative voxel spacing \(PixelSpacing\)"),
    ({"col": (1.0, 0.0, 0.0)}, r"slice\d+\.dcm: singular direction matrix"),
    ({"col": (0.6, 0.8, 0.0)}, r"slice\d+\.dcm: direction matrix .* is not orthonormal"),
])
def test_dicom_geometry_names_the_slice(tmp_path, kwargs, pattern):
    write_series(tmp_path / "s", np.zeros((3, 8, 8), np.int16), **kwargs)
    refused(tmp_path / "s", pattern)


@pytest.mark.parametrize("damage", ["truncated header", "garbage after the preamble", "truncated pixels"])
def test_corrupt_dicom_slice_is_named_not_reported_as_a_gap(tmp_path, damage):
    write_series(tmp_path / "s", np.zeros((5, 16, 16), np.int16))
    victim = sorted((tmp_path / "s").iterdir())[2]
    raw = victim.read_bytes()
    victim.write_bytes({"truncated header": raw[:200], "garbage after the preamble": raw[:132] + bytes(range(256)) * 3,
                        "truncated pixels": raw[:-200]}[damage])
    message = refused(tmp_path / "s", r"(corrupt|truncated)")
    assert message.startswith(f"{victim}: ") and "gap" not in message


@pytest.mark.parametrize("value, dtype", [(2**40, np.uint64), (-3, np.int16)])
def test_label_values_beyond_uint32_or_negative_are_refused_at_read(tmp_path, value, dtype):
    labels = np.zeros((4, 5, 6), dtype)
    labels[1:3, 1:3, 1:3] = value
    path = tmp_path / "labels.nii.gz"
    nib.save(nib.Nifti1Image(labels, np.eye(4), dtype=dtype), path)
    refused(path, r"above the largest supported label 4294967295" if value > 0 else r"negative values \(smallest -3\)",
            kind="label")


def test_float_labels_take_the_smallest_type_that_holds_them(tmp_path):
    from deconvseg.pipeline.io.volumes import read_volume

    labels = np.zeros((4, 5, 6), np.float32)
    labels[0, 0, 0] = 70000
    path = tmp_path / "labels.nii.gz"
    nib.save(nib.Nifti1Image(labels, np.eye(4)), path)
    volume = read_volume(path, kind="label")
    assert volume.array.dtype == np.uint32 and int(volume.array.max()) == 70000
