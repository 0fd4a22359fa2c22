"""Write-then-read round trips keep voxels and geometry; RAS and LPS files land on the same world points."""

from __future__ import annotations

import nibabel as nib
import nrrd
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from deconvseg.pipeline.io.volumes import read_volume, write_volume
from deconvseg.pipeline.volume import LPS_TO_RAS, Volume
from tests.conftest import shared_path

OBLIQUE = Rotation.from_euler("xyz", [20, -35, 50], degrees=True).as_matrix()
FLIPPED = np.diag([-1.0, 1.0, 1.0])  # a left-handed (LAS-like) grid, as in example_seg_dicom.nii.gz
DIRECTIONS = {"identity": np.eye(3), "oblique": OBLIQUE, "flipped": FLIPPED}
SUFFIXES = [".nii", ".nii.gz", ".nrrd", ".mha", ".mhd"]


def _volume(rng, dtype, direction, kind="image") -> Volume:
    shape = (7, 11, 13)  # odd and distinct, so any axis mix-up changes the shape
    if np.issubdtype(dtype, np.integer):
        array = rng.integers(0 if kind == "label" else -1024, 5 if kind == "label" else 3000, size=shape).astype(dtype)
    else:
        array = rng.normal(0, 100, size=shape).astype(dtype)
    return Volume(array, spacing=(0.7, 1.3, 2.9), origin=(-101.25, 37.5, 12.125), direction=direction, kind=kind)


@pytest.mark.parametrize("suffix", SUFFIXES)
@pytest.mark.parametrize("name", DIRECTIONS)
@pytest.mark.parametrize("dtype", [np.int16, np.float32, np.uint8])
def test_round_trip_keeps_voxels_dtype_and_geometry(tmp_path, rng, suffix, name, dtype):
    kind = "label" if dtype == np.uint8 else "image"
    volume = _volume(rng, dtype, DIRECTIONS[name], kind)
    path = write_volume(volume, tmp_path / f"v{suffix}")
    back = read_volume(path, kind)
    assert back.array.dtype == volume.array.dtype
    np.testing.assert_array_equal(back.array, volume.array)
    np.testing.assert_allclose(back.spacing, volume.spacing, rtol=1e-6)
    np.testing.assert_allclose(back.origin, volume.origin, atol=1e-4)
    np.testing.assert_allclose(back.direction, volume.direction, atol=1e-6)
    assert back.kind == kind
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted({f"v{suffix}", *(["v.zraw"] if suffix == ".mhd" else [])})


def test_nifti_is_written_with_ras_affine_in_qform_and_sform(tmp_path, rng):
    volume = _volume(rng, np.float32, OBLIQUE)
    image = nib.load(write_volume(volume, tmp_path / "v.nii.gz"))
    assert image.shape == volume.size  # NIfTI's i, j, k are x, y, z
    np.testing.assert_allclose(image.affine, volume.affine_ras(), atol=1e-4)
    np.testing.assert_allclose(image.get_qform(), volume.affine_ras(), atol=1e-4)
    assert int(image.header["qform_code"]) == int(image.header["sform_code"]) == 1
    np.testing.assert_array_equal(np.asarray(image.dataobj), volume.array.T)


@pytest.mark.parametrize("axcodes", ["RAS", "LPS", "LAS"])
def test_nifti_written_by_nibabel_reads_on_its_own_world_points(tmp_path, rng, axcodes):
    flips = np.diag([1.0 if code in "RAS" else -1.0 for code in axcodes])
    affine = np.eye(4)
    affine[:3, :3] = flips @ np.diag([0.8, 1.1, 3.0])
    affine[:3, 3] = [10.0, -20.0, 30.0]
    data = rng.normal(size=(5, 6, 7)).astype(np.float32)  # i, j, k
    nib.save(nib.Nifti1Image(data, affine), tmp_path / "n.nii.gz")
    volume = read_volume(tmp_path / "n.nii.gz")
    np.testing.assert_allclose(volume.affine_ras(), affine, atol=1e-5)
    np.testing.assert_array_equal(volume.array, data.T)


@pytest.mark.parametrize("space", ["right-anterior-superior", "left-posterior-superior"])
def test_nrrd_in_ras_or_lps_space_is_converted_to_lps(tmp_path, rng, space):
    directions = OBLIQUE.T * np.array([[0.5], [1.0], [2.5]])  # rows: x, y, z axis vectors in mm
    origin = np.array([5.0, -7.0, 11.0])
    data = rng.integers(0, 1000, size=(4, 5, 6)).astype(np.int16)  # i, j, k
    nrrd.write(str(tmp_path / "n.nrrd"), data, {"space": space, "space directions": directions, "space origin": origin})
    volume = read_volume(tmp_path / "n.nrrd")
    to_lps = np.eye(3) if space.startswith("left") else LPS_TO_RAS
    ijk = np.array([[0, 0, 0], [3, 4, 5], [1, 2, 3]])
    expected = (ijk @ directions + origin) @ to_lps.T
    np.testing.assert_allclose(volume.index_to_world(ijk), expected, atol=1e-6)
    np.testing.assert_array_equal(volume.array, data.T)


@pytest.mark.parametrize("name", ["example_ct.nii.gz", "example_mr_sm.nii.gz"])
def test_shared_ras_and_lps_files_match_nibabel_and_round_trip(tmp_path, name):
    path = shared_path("totalsegmentator_example", name)
    volume = read_volume(path)
    reference = nib.load(path)
    np.testing.assert_allclose(volume.affine_ras(), reference.affine, atol=1e-4)
    np.testing.assert_array_equal(volume.array, np.asarray(reference.dataobj).T)
    for suffix in (".nii.gz", ".nrrd", ".mha"):
        back = read_volume(write_volume(volume, tmp_path / f"copy{suffix}"))
        assert back.same_grid(volume) and np.array_equal(back.array, volume.array)


def test_write_does_not_touch_the_callers_array_and_replaces_existing_file(tmp_path, rng):
    volume = _volume(rng, np.float32, np.eye(3))
    before = volume.array.copy()
    path = tmp_path / "v.nii.gz"
    path.write_text("old")
    write_volume(volume, path)
    np.testing.assert_array_equal(volume.array, before)
    np.testing.assert_array_equal(read_volume(path).array, before)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd"])
def test_bool_is_written_as_uint8_and_int64_is_kept(tmp_path, suffix):
    mask = np.zeros((2, 3, 4), bool)
    mask[1, 2, 3] = True
    back = read_volume(write_volume(Volume(mask, kind="label"), tmp_path / f"m{suffix}"), "label")
    assert back.array.dtype == np.uint8 and back.array[1, 2, 3] == 1 and back.array.sum() == 1
    wide = np.arange(24, dtype=np.int64).reshape(2, 3, 4)
    back = read_volume(write_volume(Volume(wide, kind="label"), tmp_path / f"w{suffix}"), "label")
    assert back.array.dtype == np.int64 and np.array_equal(back.array, wide)
