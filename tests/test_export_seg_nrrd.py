"""labels.seg.nrrd: read back with pynrrd (Slicer's segment fields) and SimpleITK (geometry)."""

from __future__ import annotations

import nrrd
import numpy as np
import pytest
import SimpleITK as sitk

from export_cases import GEOMETRIES, TABLE, make_case, sample_by_world, sitk_affine
from deconvseg.pipeline.export.seg_nrrd import write_seg_nrrd


@pytest.mark.parametrize("geometry", sorted(GEOMETRIES))
def test_seg_nrrd_round_trip_in_world_coordinates(tmp_path, geometry):
    _, labels = make_case(geometry)
    path = write_seg_nrrd(tmp_path / "labels.seg.nrrd", labels, TABLE)

    data, header = nrrd.read(str(path))  # Fortran order: data[i, j, k] (x, y, z)
    assert header["space"] == "left-posterior-superior"
    affine = np.eye(4)
    affine[:3, :3] = np.asarray(header["space directions"], dtype=float).T
    affine[:3, 3] = header["space origin"]
    np.testing.assert_array_equal(sample_by_world(data, affine, labels), labels.array)

    image = sitk.ReadImage(str(path))
    np.testing.assert_array_equal(sample_by_world(sitk.GetArrayFromImage(image), sitk_affine(image), labels), labels.array)


def test_seg_nrrd_segment_fields_for_slicer(tmp_path):
    _, labels = make_case("ras")
    _, header = nrrd.read(str(write_seg_nrrd(tmp_path / "labels.seg.nrrd", labels, TABLE)))
    assert header["Segmentation_MasterRepresentation"] == "Binary labelmap"
    for i, label in enumerate(TABLE):
        assert header[f"Segment{i}_Name"] == label.name
        assert header[f"Segment{i}_LabelValue"] == str(label.value)
        assert header[f"Segment{i}_Layer"] == "0"
        colour = [round(float(c) * 255) for c in header[f"Segment{i}_Color"].split()]
        assert colour == list(label.color)
    # Extent i0 i1 j0 j1 k0 k1 (x, y, z) of the box (value 2), which also has a part at the border.
    z, y, x = np.nonzero(labels.array == 2)
    assert header["Segment1_Extent"] == f"{x.min()} {x.max()} {y.min()} {y.max()} {z.min()} {z.max()}"
    assert header["Segment3_Extent"] == "0 -1 0 -1 0 -1"  # 'absent' has no voxel
