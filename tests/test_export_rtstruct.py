"""RTSTRUCT: write, read back with pydicom, rasterise the contours by their WORLD coordinates
onto the image grid, and compare with the label map; validate with dciodvfy."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest

from export_cases import GEOMETRIES, TABLE, dciodvfy_errors, dice, make_case, rasterise_rtstruct
from deconvseg.pipeline.export.dicom_series import prepare_reference
from deconvseg.pipeline.export.rtstruct import slice_contours, write_rtstruct


@pytest.mark.parametrize("geometry", sorted(GEOMETRIES))
def test_rtstruct_contours_land_on_the_right_voxels(tmp_path, geometry):
    image, labels = make_case(geometry)
    reference = prepare_reference(image, tmp_path / "dicom")
    path = write_rtstruct(tmp_path / "rtstruct.dcm", labels, TABLE, reference)

    masks, referenced = rasterise_rtstruct(path, image)
    assert sorted(masks) == ["box", "liver", "ring"]  # 'absent' has no voxel and no ROI
    uids = [str(ds.SOPInstanceUID) for ds in reference.datasets]
    for name, mask in masks.items():
        truth = labels.array == TABLE.values[TABLE.names.index(name)]
        assert dice(mask, truth) == 1.0, name
        assert all(uids[k] == uid for k, uid in referenced[name])  # each contour cites its own slice


def test_rtstruct_header_references_and_dciodvfy(tmp_path):
    image, labels = make_case("oblique")
    reference = prepare_reference(image, tmp_path / "dicom")
    path = write_rtstruct(tmp_path / "rtstruct.dcm", labels, TABLE, reference)
    rt = pydicom.dcmread(path)
    assert rt.Modality == "RTSTRUCT"
    frame = rt.ReferencedFrameOfReferenceSequence[0]
    assert frame.FrameOfReferenceUID == reference.datasets[0].FrameOfReferenceUID
    series = frame.RTReferencedStudySequence[0].RTReferencedSeriesSequence[0]
    assert series.SeriesInstanceUID == reference.series_instance_uid
    assert len(series.ContourImageSequence) == image.shape[0]
    colours = {roi.ReferencedROINumber: list(roi.ROIDisplayColor) for roi in rt.ROIContourSequence}
    assert colours[1] == list(TABLE[1].color)
    assert dciodvfy_errors(path) == []


def test_slice_contours_keep_holes_for_even_odd_fill():
    from skimage.draw import polygon2mask

    mask = np.zeros((12, 12), dtype=bool)
    mask[2:10, 2:10] = True
    mask[5:7, 5:7] = False
    contours = slice_contours(mask)
    assert len(contours) == 2
    filled = np.zeros_like(mask)
    for contour in contours:
        filled ^= polygon2mask(mask.shape, contour)
    np.testing.assert_array_equal(filled, mask)


def test_long_contour_is_simplified_to_fit_a_ds_element(tmp_path, caplog):
    from deconvseg.pipeline.labels import Label, LabelTable
    from deconvseg.pipeline.volume import Volume

    rows = np.arange(500)[:, None]
    cols = np.arange(512)[None, :]
    jagged = (cols > 20 + (rows * 7) % 13) & (cols < 480 - (rows * 5) % 11)  # two saw-tooth edges
    labels = Volume(np.pad(jagged, ((6, 6), (0, 0)))[None].astype(np.uint8), (0.7, 0.7, 2.0), (-180.0, -200.0, 10.0),
                    kind="label")
    image = labels.with_array(labels.array.astype(np.int16), kind="image", modality="CT")
    reference = prepare_reference(image, tmp_path / "dicom")
    path = write_rtstruct(tmp_path / "rtstruct.dcm", labels, LabelTable((Label(1, "saw", (9, 9, 9)),)), reference)
    contour = pydicom.dcmread(path).ROIContourSequence[0].ContourSequence[0]
    assert contour["ContourData"].VR == "DS"
    assert len(contour.ContourData) == 3 * contour.NumberOfContourPoints
    masks, _ = rasterise_rtstruct(path, image)
    assert dice(masks["saw"], labels.array == 1) > 0.98
    assert "simplified" in caplog.text  # the unsimplified contour would not have fitted
