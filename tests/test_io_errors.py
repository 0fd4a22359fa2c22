"""Every bad input is refused with one line naming the file, the problem and the fix, and leaves no file behind."""

from __future__ import annotations

import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from deconvseg.pipeline.errors import InputError
from deconvseg.pipeline.io.volumes import read_volume, write_volume
from deconvseg.pipeline.volume import Volume
from tests.conftest import shared_path
from tests.test_io_dicom import write_rtstruct, write_series


def _listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def refused(path: Path, pattern: str, **kwargs) -> str:
    """Read ``path``, expect an InputError whose one-line message names it and matches ``pattern``."""
    folder = path.parent if path.parent.exists() else path
    before = _listing(folder)
    with pytest.raises(InputError) as info:
        read_volume(path, **kwargs)
    message = str(info.value)
    assert "\n" not in message and message.startswith(str(info.value.path)) and info.value.fix
    assert re.search(pattern, message), message
    assert _listing(folder) == before  # nothing written, nothing left behind
    return message


def _mha_header(path: Path, size: str) -> Path:
    path.write_text(f"ObjectType = Image\nNDims = 3\nDimSize = {size}\nElementType = MET_FLOAT\nElementDataFile = LOCAL\n")
    return path


def test_missing_path(tmp_path):
    refused(tmp_path / "absent.nii.gz", r"absent.nii.gz: no such file or folder; check the path")


def test_empty_file(tmp_path):
    (tmp_path / "empty.nii.gz").write_bytes(b"")
    refused(tmp_path / "empty.nii.gz", r"empty file \(0 bytes\)")


@pytest.mark.parametrize("name", ["text.nii.gz", "noise.mha", "noise.nrrd", "noise.nii"])
def test_wrong_magic_or_garbage(tmp_path, name):
    data = b"hello, this is not an image" if name.startswith("text") else np.random.default_rng(0).bytes(2000)
    (tmp_path / name).write_bytes(data)
    refused(tmp_path / name, r"not a readable NIfTI/NRRD/MHA image")


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz", ".mha", ".nrrd"])
def test_truncated_file(tmp_path, rng, suffix):
    volume = Volume(rng.normal(size=(20, 30, 40)).astype(np.float32))
    path = write_volume(volume, tmp_path / f"full{suffix}")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    refused(path, r"truncated")


def test_4d_without_channel_and_channel_out_of_range(tmp_path):
    nib.save(nib.Nifti1Image(np.zeros((4, 5, 6, 3), np.float32), np.eye(4)), tmp_path / "four.nii.gz")
    refused(tmp_path / "four.nii.gz", r"image has 3 channels \(4D or multi-component\); choose one with --channel N")
    refused(tmp_path / "four.nii.gz", r"channel 3 does not exist \(image has 3\)", channel=3)
    assert read_volume(tmp_path / "four.nii.gz", channel=2).shape == (6, 5, 4)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_or_inf_voxels(tmp_path, bad):
    array = np.zeros((3, 4, 5), np.float32)
    array[1, 2, 3] = bad
    array[0, 0, 0] = bad
    nib.save(nib.Nifti1Image(array, np.eye(4)), tmp_path / "bad.nii.gz")
    refused(tmp_path / "bad.nii.gz", r"volume contains 2 NaN/Inf voxels")


def test_zero_size_axis(tmp_path):
    refused(_mha_header(tmp_path / "zero.mha", "0 4 4"), r"zero-size axis in image size \[0, 4, 4\]")


def test_voxel_limit_is_checked_from_the_header_before_any_pixel_is_read(tmp_path, rng):
    # The header claims 10^12 voxels and no pixel data follows: only a header check can say "too large".
    refused(_mha_header(tmp_path / "huge.mha", "10000 10000 10000"), r"1e\+12 voxels exceed the limit of 1e\+09")
    path = write_volume(Volume(np.zeros((4, 5, 6), np.int16)), tmp_path / "small.nrrd")
    refused(path, r"120 voxels exceed the limit of 100; crop or downsample", max_voxels=100)
    write_series(tmp_path / "series", np.zeros((3, 4, 5), np.int16))
    refused(tmp_path / "series", r"60 voxels exceed the limit of 50", max_voxels=50)


def test_label_with_fractional_values(tmp_path):
    nib.save(nib.Nifti1Image(np.full((3, 4, 5), 0.5, np.float32), np.eye(4)), tmp_path / "soft.nii.gz")
    refused(tmp_path / "soft.nii.gz", r"label map holds non-integer values", kind="label")


def test_non_image_dicom_and_folders_without_dicom(tmp_path):
    (tmp_path / "rt").mkdir()
    write_rtstruct(tmp_path / "rt" / "rtstruct.dcm")
    refused(tmp_path / "rt", r"no DICOM image series: found only non-image objects \(RT Structure Set Storage x1\)")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("no images here")
    refused(tmp_path / "notes", r"no DICOM image series: found no DICOM files")


def test_series_with_a_missing_slice_reports_the_gap(tmp_path):
    positions = [(0.0, 0.0, z) for z in (0.0, 2.0, 4.0, 8.0, 10.0)]
    write_series(tmp_path / "s", np.zeros((5, 4, 4), np.int16), positions=positions)
    refused(tmp_path / "s", r"gap or non-uniform slice spacing: 4.00 mm between slices 2 and 3 .*expected 2.00 mm")


def test_series_with_two_slices_at_one_position(tmp_path):
    positions = [(0.0, 0.0, z) for z in (0.0, 2.0, 2.0, 4.0)]
    write_series(tmp_path / "s", np.zeros((4, 4, 4), np.int16), positions=positions)
    refused(tmp_path / "s", r"two slices at the same position")


def test_series_with_gantry_tilt(tmp_path):
    positions = [(0.0, 0.5 * k, 2.0 * k) for k in range(4)]
    write_series(tmp_path / "s", np.zeros((4, 4, 4), np.int16), positions=positions)
    refused(tmp_path / "s", r"slice positions leave the slice normal \(gantry tilt")


def test_monai_broken_series_gives_the_gap_error_not_a_volume():
    refused(shared_path("monai_testing_data", "CT_DICOM"), r"CT_DICOM: gap or non-uniform slice spacing: 202.50 mm")


def test_truncated_dicom_pixel_data(tmp_path):
    write_series(tmp_path / "s", np.zeros((3, 64, 64), np.int16))
    victim = sorted((tmp_path / "s").iterdir())[1]
    victim.write_bytes(victim.read_bytes()[:-4000])
    message = refused(tmp_path / "s", r"pixel data cannot be decoded")
    assert message.startswith(f"{victim}: "), message  # the damaged slice, not the folder


def test_writes_that_fail_leave_nothing_behind(tmp_path):
    volume = Volume(np.zeros((2, 3, 4), np.float32))
    with pytest.raises(InputError, match=r"unknown output format '.png'"):
        write_volume(volume, tmp_path / "v.png")
    with pytest.raises(InputError, match=r"output folder does not exist"):
        write_volume(volume, tmp_path / "absent" / "v.nii.gz")
    (tmp_path / "taken.nii.gz").mkdir()  # the final rename fails after the data was written
    with pytest.raises(OSError):
        write_volume(volume, tmp_path / "taken.nii.gz")
    assert _listing(tmp_path) == ["taken.nii.gz"]


def test_2d_image_is_refused(tmp_path):
    sitk.WriteImage(sitk.Image(8, 9, sitk.sitkInt16), str(tmp_path / "slice.mha"))
    refused(tmp_path / "slice.mha", r"2D image of size \[8, 9\]; pass a 3D volume")


def test_sheared_nifti_is_refused_with_the_reason(tmp_path):
    affine = np.diag([1.0, 1.0, 2.0, 1.0])
    affine[0, 1] = 0.3
    image = nib.Nifti1Image(np.zeros((4, 5, 6), np.int16), None)
    image.set_sform(affine, code=2)
    nib.save(image, tmp_path / "sheared.nii.gz")
    refused(tmp_path / "sheared.nii.gz", r"NIfTI affine is sheared \(axes not orthogonal\)")
