"""DICOM-SEG (and the DICOM series it references): write, read back with highdicom/SimpleITK,
compare voxels on the source frames and at world positions, validate with dciodvfy."""

from __future__ import annotations

import highdicom as hd
import numpy as np
import pytest
import SimpleITK as sitk

from export_cases import GEOMETRIES, TABLE, dciodvfy_errors, make_case, sample_by_world, sitk_affine
from deconvseg.pipeline.export.dicom_seg import write_dicom_seg
from deconvseg.pipeline.export.dicom_series import prepare_reference


def seg_labels_by_value(seg: hd.seg.Segmentation, table) -> np.ndarray:
    """Lookup from segment number to label value, through the segment labels (names)."""
    by_name = {label.name: label.value for label in table}
    lut = np.zeros(max(seg.segment_numbers) + 1, dtype=np.int64)
    for number in seg.segment_numbers:
        lut[number] = by_name[seg.get_segment_description(number).segment_label]
    return lut


@pytest.mark.parametrize("geometry", sorted(GEOMETRIES))
def test_seg_on_generated_series_round_trips(tmp_path, geometry):
    image, labels = make_case(geometry)
    reference = prepare_reference(image, tmp_path / "dicom")
    assert reference.origin == "generated-from-volume" and len(reference.files) == image.shape[0]

    # The generated series itself, read by SimpleITK/GDCM: same voxels at the same world points.
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(tmp_path / "dicom")))
    series = reader.Execute()
    back = sample_by_world(sitk.GetArrayFromImage(series), sitk_affine(series), image)
    np.testing.assert_array_equal(back, image.array)

    path = write_dicom_seg(tmp_path / "seg.dcm", labels, TABLE, reference)
    seg = hd.seg.segread(path)
    lut = seg_labels_by_value(seg, TABLE)
    assert sorted(lut[1:].tolist()) == [1, 2, 3]  # 'absent' gets no segment
    uids = [str(ds.SOPInstanceUID) for ds in reference.datasets]
    on_frames = lut[seg.get_pixels_by_source_instance(uids, combine_segments=True)]
    np.testing.assert_array_equal(on_frames, labels.array)

    volume = seg.get_volume(combine_segments=True)  # highdicom's own geometry from the SEG
    back = sample_by_world(lut[volume.array], volume.affine, labels, outside=0)
    np.testing.assert_array_equal(back, labels.array)
    # empty frames are omitted
    assert seg.NumberOfFrames == sum(int((labels.array[k] == v).any()) for k in range(labels.shape[0]) for v in (1, 2, 3))


def test_seg_segment_descriptions_and_dciodvfy(tmp_path):
    image, labels = make_case("oblique")
    reference = prepare_reference(image, tmp_path / "dicom")
    path = write_dicom_seg(tmp_path / "seg.dcm", labels, TABLE, reference)
    seg = hd.seg.segread(path)
    liver = seg.get_segment_description(1)
    assert liver.segment_label == "liver"
    assert liver.segmented_property_type.value == "10200004"
    assert liver.algorithm_type == hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC
    rgb = hd.color.CIELabColor.from_dicom_value(liver.RecommendedDisplayCIELabValue).to_rgb()
    np.testing.assert_allclose(rgb, TABLE[1].color, atol=2)
    assert str(seg.ReferencedSeriesSequence[0].SeriesInstanceUID) == reference.series_instance_uid
    assert dciodvfy_errors(path) == []
    assert dciodvfy_errors(reference.files[0]) == []


def test_generated_uids_are_deterministic(tmp_path):
    image, labels = make_case("lps")
    first = prepare_reference(image, tmp_path / "a")
    second = prepare_reference(image, tmp_path / "b")
    assert [ds.SOPInstanceUID for ds in first.datasets] == [ds.SOPInstanceUID for ds in second.datasets]
    a = hd.seg.segread(write_dicom_seg(tmp_path / "a.dcm", labels, TABLE, first))
    b = hd.seg.segread(write_dicom_seg(tmp_path / "b.dcm", labels, TABLE, second))
    assert a.SOPInstanceUID == b.SOPInstanceUID and str(a.SOPInstanceUID).startswith("2.25.")
    other = labels.with_array(np.where(labels.array == 3, 0, labels.array).astype(np.uint8))
    c = hd.seg.segread(write_dicom_seg(tmp_path / "c.dcm", other, TABLE, first))
    assert c.SOPInstanceUID != a.SOPInstanceUID


def test_blank_uids_of_an_anonymised_series_are_filled_deterministically():
    import pydicom

    from conftest import shared_path
    from deconvseg.pipeline.export.dicom_series import assign_uids
    from deconvseg.pipeline.files import file_digest

    files = sorted(shared_path("totalsegmentator_example", "example_ct_dicom").iterdir())[:3]
    originals = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    assert all(ds.SOPInstanceUID == "" and ds.SeriesInstanceUID == "" for ds in originals)
    digests = [file_digest(f) for f in files]
    first, second = assign_uids(originals, digests), assign_uids(originals, digests)
    assert [ds.SOPInstanceUID for ds in first] == [ds.SOPInstanceUID for ds in second]
    assert len({ds.SOPInstanceUID for ds in first}) == 3 and len({ds.SeriesInstanceUID for ds in first}) == 1
    assert first[0].SOPClassUID == pydicom.uid.CTImageStorage  # from the file meta
    assert first[0].FrameOfReferenceUID == originals[0].FrameOfReferenceUID  # present values are kept
    assert all(ds.SOPInstanceUID == "" for ds in originals)  # the caller's datasets are not changed


def test_sided_structure_without_a_sided_concept_gets_a_laterality_modifier(tmp_path):
    from deconvseg.pipeline.export.label_tables import with_codes
    from deconvseg.pipeline.labels import Label, LabelTable

    image, labels = make_case("lps")
    table = with_codes(LabelTable((Label(1, "kidney_left", (200, 80, 80)), Label(2, "kidney_right", (80, 80, 200)),
                                   Label(3, "spleen", (80, 200, 80)), Label(5, "liver", (200, 200, 80)))))
    path = write_dicom_seg(tmp_path / "seg.dcm", labels, table, prepare_reference(image, tmp_path / "dicom"),
                           series_description="deconvseg test 0123456789ab")
    seg = hd.seg.segread(path)
    types = {d.SegmentLabel: d.SegmentedPropertyTypeCodeSequence[0] for d in seg.SegmentSequence}
    assert types["kidney_left"].CodeMeaning == "Kidney"
    assert types["kidney_left"].SegmentedPropertyTypeModifierCodeSequence[0].CodeMeaning == "Left"
    assert types["kidney_right"].SegmentedPropertyTypeModifierCodeSequence[0].CodeValue == "24028007"
    assert "SegmentedPropertyTypeModifierCodeSequence" not in types["spleen"]
    assert seg.SeriesDescription == "deconvseg test 0123456789ab"
    assert dciodvfy_errors(path) == []
