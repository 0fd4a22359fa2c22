"""DICOM series: the TotalSegmentator example against its NIfTI reference, series choice, ordering, oblique grids."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, RTStructureSetStorage, generate_uid

from deconvseg.pipeline.errors import InputError
from deconvseg.pipeline.io.volumes import read_volume
from deconvseg.pipeline.resample import resample_to_grid
from tests.conftest import shared_path

METADATA_KEYS = {
    "modality", "source", "dicom_files", "series_instance_uid", "study_instance_uid",
    "frame_of_reference_uid", "sop_instance_uids", "patient_id",
}


def write_series(
    folder: Path,
    array: np.ndarray,
    *,
    spacing=(0.8, 0.9, 2.0),
    origin=(-10.0, -20.0, 30.0),
    row=(1.0, 0.0, 0.0),
    col=(0.0, 1.0, 0.0),
    positions: list | None = None,
    series_uid: str | None = None,
    prefix: str = "slice",
) -> str:
    """Write ``array[z, y, x]`` (int16) as an uncompressed CT series, one file per slice; returns its UID."""
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or generate_uid()
    study_uid, frame_uid = generate_uid(), generate_uid()
    normal = np.cross(row, col)
    for k, plane in enumerate(array):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        path = folder / f"{prefix}{len(array) - k:03d}.dcm"  # names in reverse order: sorting must use positions
        ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.SeriesInstanceUID, ds.StudyInstanceUID, ds.FrameOfReferenceUID = series_uid, study_uid, frame_uid
        ds.Modality, ds.PatientID = "CT", "PHANTOM-1"
        position = positions[k] if positions is not None else np.asarray(origin) + k * spacing[2] * normal
        ds.ImagePositionPatient = [f"{v:.6f}" for v in position]
        ds.ImageOrientationPatient = [f"{v:.8f}" for v in (*row, *col)]
        ds.PixelSpacing = [spacing[1], spacing[0]]
        ds.SliceThickness = spacing[2]
        ds.Rows, ds.Columns = plane.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = 0, 1
        ds.PixelData = np.ascontiguousarray(plane, dtype=np.int16).tobytes()
        ds.save_as(path, enforce_file_format=True)
    return series_uid


def write_rtstruct(path: Path) -> None:
    """A DICOM object that is not an image (an RT Structure Set without contours)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = RTStructureSetStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = RTStructureSetStorage, meta.MediaStorageSOPInstanceUID, "RTSTRUCT"
    ds.save_as(path, enforce_file_format=True)


@pytest.fixture(scope="module")
def example_ct():
    return read_volume(shared_path("totalsegmentator_example", "example_ct_dicom"))


def test_totalsegmentator_series_with_empty_uids_and_jpeg2000_reads(example_ct):
    volume = example_ct
    assert volume.size == (512, 512, 20)
    np.testing.assert_allclose(volume.spacing, (0.9766, 0.9766, 2.0), atol=1e-4)
    assert volume.modality == "CT" and volume.array.dtype == np.int16
    assert (int(volume.array.min()), int(volume.array.max())) == (-1024, 1839)  # decoded JPEG 2000, HU
    assert METADATA_KEYS <= set(volume.metadata)
    assert volume.metadata["series_instance_uid"] == "" and volume.metadata["sop_instance_uids"] == [""] * 20
    # dicom_files follow the z index: each file's ImagePositionPatient is the world point of its first voxel.
    for k, name in enumerate(volume.metadata["dicom_files"]):
        ipp = np.asarray(pydicom.dcmread(name, stop_before_pixels=True).ImagePositionPatient, dtype=float)
        np.testing.assert_allclose(volume.index_to_world([0, 0, k])[0], ipp, atol=1e-4)


def test_totalsegmentator_series_is_on_the_grid_of_its_nifti_reference(example_ct):
    ct = example_ct
    ref = read_volume(shared_path("totalsegmentator_example", "example_seg_dicom.nii.gz"), "label")
    assert not np.allclose(ref.origin, ct.origin)  # the reference stores the grid with y flipped ...
    # ... yet every voxel centre of the reference lands exactly on a voxel centre of the series: the
    # index-to-index map is affine with an integer matrix and translation, and the corners stay inside.
    index_map = np.linalg.inv(ct.affine_lps()) @ ref.affine_lps()
    np.testing.assert_allclose(index_map, np.rint(index_map), atol=1e-4)
    corners = np.array([[i, j, k] for i in (0, 511) for j in (0, 511) for k in (0, 19)])
    sample = np.column_stack([np.random.default_rng(0).integers(0, n, 20000) for n in ref.size])
    for points in (corners, sample):
        index = ct.world_to_index(ref.index_to_world(points))
        assert np.abs(index - np.rint(index)).max() < 1e-3
        assert index.min() > -1e-3 and (index.max(axis=0) < np.array(ct.size) - 1 + 1e-3).all()
    # The labels put onto the series' grid land on the same world points, and on tissue, not air.
    moved = resample_to_grid(ref, ct)
    points = np.array([[100, 200, 3], [256, 300, 10], [400, 150, 19]])
    for point in points:
        back = np.rint(ref.world_to_index(ct.index_to_world(point))[0]).astype(int)
        assert moved.array[point[2], point[1], point[0]] == ref.array[back[2], back[1], back[0]]
    np.testing.assert_array_equal(moved.array, ref.array[:, ::-1, :])
    hu = ct.array[moved.array > 0]
    assert np.mean(hu > -500) > 0.95  # a y flip would put organs on air


def test_synthetic_series_is_sorted_by_position_not_name(tmp_path, rng):
    array = rng.integers(-1000, 1000, size=(6, 5, 4)).astype(np.int16)
    uid = write_series(tmp_path, array)
    volume = read_volume(tmp_path)
    np.testing.assert_array_equal(volume.array, array)
    assert volume.spacing == pytest.approx((0.8, 0.9, 2.0)) and volume.origin == pytest.approx((-10, -20, 30))
    assert volume.metadata["series_instance_uid"] == uid and volume.metadata["patient_id"] == "PHANTOM-1"
    assert [Path(f).name for f in volume.metadata["dicom_files"]] == [f"slice{6 - k:03d}.dcm" for k in range(6)]


def test_oblique_series_geometry_puts_every_slice_at_its_position(tmp_path, rng):
    angle = np.deg2rad(25)
    row, col = (np.cos(angle), np.sin(angle), 0.0), (0.0, np.cos(0.3), -np.sin(0.3))
    col = tuple(np.asarray(col) - np.dot(col, row) * np.asarray(row))
    col = tuple(np.asarray(col) / np.linalg.norm(col))
    array = rng.integers(-1000, 1000, size=(5, 6, 7)).astype(np.int16)
    write_series(tmp_path, array, row=row, col=col, spacing=(0.5, 0.6, 1.5))
    volume = read_volume(tmp_path)
    for k, name in enumerate(volume.metadata["dicom_files"]):
        ipp = np.asarray(pydicom.dcmread(name).ImagePositionPatient, dtype=float)
        np.testing.assert_allclose(volume.index_to_world([0, 0, k])[0], ipp, atol=1e-4)
    np.testing.assert_allclose(volume.direction[:, 0], row, atol=1e-6)
    np.testing.assert_array_equal(volume.array, array)


def test_several_series_pick_largest_and_log_or_pick_by_uid(tmp_path, rng, caplog):
    small = write_series(tmp_path, np.zeros((3, 4, 4), np.int16), prefix="a")
    large = write_series(tmp_path, np.ones((5, 4, 4), np.int16), prefix="b")
    write_rtstruct(tmp_path / "rtstruct.dcm")
    with caplog.at_level(logging.WARNING, logger="deconvseg.pipeline.io.dicom"):
        volume = read_volume(tmp_path)
    assert volume.metadata["series_instance_uid"] == large and volume.shape == (5, 4, 4)
    assert "holds 2 series; reading the largest" in caplog.text and large in caplog.text
    assert read_volume(tmp_path, series_uid=small).shape == (3, 4, 4)
    assert read_volume(tmp_path / "a001.dcm").metadata["series_instance_uid"] == small  # a file picks its series
    with pytest.raises(InputError, match="no series with UID '1.2.3'; choose one of"):
        read_volume(tmp_path, series_uid="1.2.3")
