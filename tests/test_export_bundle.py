"""The review bundle end to end: ``deconvseg export`` on the TotalSegmentator DICOM series (SEG
and RTSTRUCT read back onto the source frames, dciodvfy, manifest), report.html in headless
Chromium, and atomic writing (no partial folder on failure)."""

from __future__ import annotations

import json
import shutil
import subprocess

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from typer.testing import CliRunner

from conftest import shared_path
from export_cases import TABLE, dciodvfy_errors, dice, make_case, rasterise_rtstruct, sample_by_world, sitk_affine
from deconvseg.flows.cli import app
from deconvseg.pipeline.errors import InputError
from deconvseg.pipeline.export.bundle import write_bundle
from deconvseg.pipeline.io.volumes import read_volume

BUNDLE_FILES = {"labels.nii.gz", "labels.json", "seg.dcm", "rtstruct.dcm", "labels.seg.nrrd", "overlays/axial.png",
                "overlays/coronal.png", "overlays/sagittal.png", "stats.json", "stats.csv", "report.html", "manifest.json"}
RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


@pytest.fixture(scope="module")
def totalseg(tmp_path_factory):
    """The bundle ``deconvseg export`` writes for the TotalSegmentator DICOM series + its label map."""
    root = shared_path("totalsegmentator_example")
    out = tmp_path_factory.mktemp("ts") / "case"
    result = CliRunner().invoke(app, [
        "export", str(root / "example_seg_dicom.nii.gz"), "--image", str(root / "example_ct_dicom"), "--out", str(out),
        "--labels", str(root / "class_map_total_and_total_mr.json"), "--labels-key", "total", "--json",
    ])
    assert result.exit_code == 0, result.output
    image = read_volume(root / "example_ct_dicom")
    nii = nib.load(root / "example_seg_dicom.nii.gz")  # the reference, put on the DICOM grid by world position
    reference = sample_by_world(np.asarray(nii.dataobj), RAS_TO_LPS @ nii.affine, image)
    names = json.loads((root / "class_map_total_and_total_mr.json").read_text())["total"]
    return {"out": out, "image": image, "reference": reference, "names": names, "summary": json.loads(result.output)}


def test_bundle_has_the_documented_files_and_stats_keys(totalseg):
    out = totalseg["out"]
    assert BUNDLE_FILES <= set(totalseg["summary"]["files"])
    stats = json.loads((out / "stats.json").read_text())
    present = sorted(set(np.unique(totalseg["reference"]).tolist()) - {0})
    assert len(present) == 31 and [row["value"] for row in stats] == present
    for row in stats:
        assert {"name", "value", "volume_ml", "voxels", "touches_border"} <= set(row)
        assert row["name"] == totalseg["names"][str(row["value"])]
        assert row["voxels"] == int((totalseg["reference"] == row["value"]).sum())
        assert row["volume_ml"] == pytest.approx(row["voxels"] * 0.9765625 ** 2 * 2.0 / 1000, abs=1e-3)


def test_nifti_and_seg_nrrd_hold_the_reference_at_the_same_world_points(totalseg):
    import nrrd

    nii = nib.load(totalseg["out"] / "labels.nii.gz")
    back = sample_by_world(np.asarray(nii.dataobj), RAS_TO_LPS @ nii.affine, totalseg["image"])
    np.testing.assert_array_equal(back, totalseg["reference"])
    data, header = nrrd.read(str(totalseg["out"] / "labels.seg.nrrd"))
    affine = np.eye(4)
    affine[:3, :3] = np.asarray(header["space directions"], dtype=float).T
    affine[:3, 3] = header["space origin"]
    np.testing.assert_array_equal(sample_by_world(data, affine, totalseg["image"]), totalseg["reference"])
    assert {header[f"Segment{i}_Name"] for i in range(31)} == {totalseg["names"][str(v)] for v in
                                                              set(np.unique(totalseg["reference"]).tolist()) - {0}}


def test_seg_reads_back_onto_the_source_frames_voxel_for_voxel(totalseg):
    out, image = totalseg["out"], totalseg["image"]
    manifest = json.loads((out / "manifest.json").read_text())
    reference = manifest["dicom_reference"]
    assert reference["origin"] == "copy-with-generated-uids" and "blank" in reference["note"]
    copies = sorted((out / "dicom").glob("*.dcm"))
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in copies]
    assert len(headers) == 20 and all(str(h.SOPInstanceUID).startswith("2.25.") for h in headers)
    assert len(manifest["inputs"]["image"]) == 20 and all(len(item["sha256"]) == 64 for item in manifest["inputs"]["image"])

    # The copy holds the source voxels at the source positions (read by SimpleITK/GDCM).
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(out / "dicom"), reference["series_instance_uid"]))
    series = reader.Execute()
    np.testing.assert_array_equal(sample_by_world(sitk.GetArrayFromImage(series), sitk_affine(series), image), image.array)

    seg = hd.seg.segread(out / "seg.dcm")
    by_name = {name: int(value) for value, name in totalseg["names"].items()}
    lut = np.zeros(max(seg.segment_numbers) + 1, dtype=np.int64)
    for number in seg.segment_numbers:
        lut[number] = by_name[seg.get_segment_description(number).segment_label]
    # frames in z order = the copy's instances sorted by position along the slice normal
    positions = {str(h.SOPInstanceUID): float(h.ImagePositionPatient[2]) for h in headers}
    uids = sorted(positions, key=positions.get)
    assert np.allclose(sorted(positions.values()), [image.origin[2] + 2.0 * k for k in range(20)])
    on_frames = lut[seg.get_pixels_by_source_instance(uids, combine_segments=True)]
    np.testing.assert_array_equal(on_frames, totalseg["reference"])
    volume = seg.get_volume(combine_segments=True)
    np.testing.assert_array_equal(sample_by_world(lut[volume.array], volume.affine, image, outside=0), totalseg["reference"])


SUBSET = {"spleen", "liver", "stomach", "aorta", "vertebrae_T12", "rib_left_10", "inferior_vena_cava"}


@pytest.mark.parametrize("names", [SUBSET, pytest.param(None, marks=pytest.mark.slow)], ids=["subset", "all"])
def test_rtstruct_contours_match_the_structures(totalseg, names):
    masks, referenced = rasterise_rtstruct(totalseg["out"] / "rtstruct.dcm", totalseg["image"], names)
    by_name = {name: int(value) for value, name in totalseg["names"].items()}
    assert len(masks) == (31 if names is None else len(SUBSET))
    uids = {int(round(float(h.ImagePositionPatient[2]) - totalseg["image"].origin[2]) // 2): str(h.SOPInstanceUID)
            for h in (pydicom.dcmread(p, stop_before_pixels=True) for p in (totalseg["out"] / "dicom").glob("*.dcm"))}
    for name, mask in masks.items():
        truth = totalseg["reference"] == by_name[name]
        assert dice(mask, truth) > 0.999, name
        assert all(uids[k] == uid for k, uid in referenced[name]), name


def test_dicom_objects_pass_dciodvfy(totalseg):
    assert dciodvfy_errors(totalseg["out"] / "seg.dcm") == []
    assert dciodvfy_errors(totalseg["out"] / "rtstruct.dcm") == []


def test_report_images_load_in_headless_chromium(totalseg, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed; .ci/run installs Debian's chromium")
    html = (totalseg["out"] / "report.html").read_text()
    assert "src='data:image/png;base64," in html and "http" not in html.split("<body>")[1]
    probe = tmp_path / "probe.html"  # the report plus a script that records each image's naturalWidth
    probe.write_text(html.replace("</body>", "<script>window.addEventListener('load',()=>{document.body.setAttribute("
                                  "'data-widths',[...document.images].map(i=>i.complete?i.naturalWidth:-1).join(','));});"
                                  "</script></body>"))
    result = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
         "--virtual-time-budget=5000", "--dump-dom", probe.as_uri()],
        capture_output=True, text=True, timeout=120,
    )
    widths = result.stdout.split('data-widths="')[1].split('"')[0].split(",")
    assert len(widths) == 3 and all(int(w) > 0 for w in widths), widths


def test_nifti_input_with_dicom_series_and_uncertainty(tmp_path, rng):
    image, labels = make_case("oblique")
    uncertainty = labels.with_array(rng.random(labels.shape).astype(np.float32) * 0.1, kind="image")
    summary = write_bundle(tmp_path / "case", image, labels, TABLE, uncertainty=uncertainty, dicom_series=True,
                           manifest={"model": {"name": "test"}, "timings_s": {"inference": 1.5}})
    out = summary.path
    assert {"uncertainty.nii.gz", "overlays/uncertainty.png", "dicom/IM0001.dcm"} <= {
        str(p.relative_to(out)) for p in out.rglob("*")}
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["dicom_reference"]["origin"] == "generated-from-volume"
    assert manifest["model"] == {"name": "test"} and manifest["timings_s"]["inference"] == 1.5
    assert "export.dicom_seg" in manifest["timings_s"] and manifest["software"]["highdicom"]
    assert summary.flags == [{"name": "absent", "value": 5, "flag": "missing"}]
    masks, _ = rasterise_rtstruct(out / "rtstruct.dcm", image)
    assert dice(masks["ring"], labels.array == 3) == 1.0
    assert not list(tmp_path.glob(".case.*"))  # no temporary siblings left


def test_failure_leaves_no_partial_bundle_and_keeps_the_old_one(tmp_path):
    image, labels = make_case("lps")
    out = tmp_path / "case"
    write_bundle(out, image, labels, TABLE)
    before = (out / "stats.json").read_bytes()
    broken = image.with_array(image.array, dicom_files=[str(tmp_path / "gone.dcm")] * image.shape[0])
    with pytest.raises(FileNotFoundError):
        write_bundle(out, broken, labels, TABLE)  # fails after the NIfTI and NRRD files were written
    assert (out / "stats.json").read_bytes() == before and not (out / "seg.dcm").exists()
    with pytest.raises(FileNotFoundError):
        write_bundle(tmp_path / "new", broken, labels, TABLE)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["case"]


def test_labels_off_the_image_grid_are_refused_in_one_line(tmp_path):
    image, labels = make_case("lps")
    shifted = type(labels)(labels.array, labels.spacing, (labels.origin[0] + 0.3, *labels.origin[1:]), labels.direction,
                           kind="label")
    with pytest.raises(InputError, match="not on the image's voxel grid"):
        write_bundle(tmp_path / "case", image, shifted, TABLE)
    flipped = labels.with_array(labels.array[:, ::-1].copy())  # same voxels stored the other way up
    flipped = type(labels)(flipped.array, labels.spacing, tuple(labels.index_to_world([[0, labels.shape[1] - 1, 0]])[0]),
                           labels.direction @ np.diag([1.0, -1.0, 1.0]), kind="label")
    summary = write_bundle(tmp_path / "case", image, flipped, TABLE)
    assert [row["voxels"] for row in summary.stats] == [int((labels.array == v).sum()) for v in TABLE.values]
    assert not (tmp_path / "case" / "seg.dcm").exists()  # NIfTI-only input without dicom_series


def test_cli_unknown_labels_get_generic_names_and_errors_are_one_line(tmp_path):
    from deconvseg.pipeline.io.volumes import write_volume

    image, labels = make_case("ras")
    write_volume(image, tmp_path / "image.nii.gz")
    write_volume(labels, tmp_path / "labels.nii.gz")
    (tmp_path / "names.json").write_text(json.dumps({"1": "liver"}))
    runner = CliRunner()
    result = runner.invoke(app, ["export", str(tmp_path / "labels.nii.gz"), "--image", str(tmp_path / "image.nii.gz"),
                                 "--out", str(tmp_path / "out"), "--labels", str(tmp_path / "names.json"), "--json",
                                 "--modality", "CT"])
    assert result.exit_code == 0, result.output
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert [row["name"] for row in stats] == ["liver", "label_2", "label_3"]
    assert stats[0]["intensity_unit"] == "HU" and stats[0]["value"] == 1
    assert "seg.dcm" not in json.loads(result.output)["files"]
    result = runner.invoke(app, ["export", str(tmp_path / "missing.nii.gz"), "--image", str(tmp_path / "image.nii.gz"),
                                 "--out", str(tmp_path / "out2")])
    assert result.exit_code == 2 and "missing.nii.gz" in result.output and not (tmp_path / "out2").exists()
    result = runner.invoke(app, ["export", str(tmp_path / "labels.nii.gz"), "--image", str(tmp_path / "image.nii.gz"),
                                 "--out", str(tmp_path / "out3"), "--modality", "PET"])
    assert result.exit_code == 2 and "--modality CT" in result.output and not (tmp_path / "out3").exists()


@pytest.mark.parametrize("geometry", ["negated", "oblique"])
def test_dicom_input_with_proper_uids_is_referenced_as_it_is(tmp_path, geometry):
    from deconvseg.pipeline.export.dicom_series import series_from_volume, write_series

    image, labels = make_case(geometry)
    write_series(series_from_volume(image), tmp_path / "series")
    dicom_image = read_volume(tmp_path / "series")  # the project's reader: dicom_files in z order
    assert len(dicom_image.metadata["dicom_files"]) == image.shape[0]
    summary = write_bundle(tmp_path / "case", dicom_image, labels, TABLE)  # labels on the original grid
    manifest = json.loads((summary.path / "manifest.json").read_text())
    assert manifest["dicom_reference"]["origin"] == "source" and not (summary.path / "dicom").exists()
    seg = hd.seg.segread(summary.path / "seg.dcm")
    sources = [pydicom.dcmread(f, stop_before_pixels=True) for f in dicom_image.metadata["dicom_files"]]
    assert str(seg.ReferencedSeriesSequence[0].SeriesInstanceUID) == str(sources[0].SeriesInstanceUID)
    lut = np.array([0, 1, 2, 3])  # segments are numbered in table order of the structures present
    volume = seg.get_volume(combine_segments=True)
    np.testing.assert_array_equal(sample_by_world(lut[volume.array], volume.affine, image, outside=0), labels.array)
    masks, _ = rasterise_rtstruct(summary.path / "rtstruct.dcm", image)
    assert all(dice(masks[name], labels.array == TABLE.values[TABLE.names.index(name)]) == 1.0 for name in masks)


def test_empty_label_map_gives_a_bundle_without_seg(tmp_path):
    image, labels = make_case("lps")
    empty = labels.with_array(np.zeros_like(labels.array))
    summary = write_bundle(tmp_path / "case", image, empty, TABLE, dicom_series=True)
    assert not (summary.path / "seg.dcm").exists() and not (summary.path / "rtstruct.dcm").exists()
    manifest = json.loads((summary.path / "manifest.json").read_text())
    assert "empty" in manifest["dicom_reference"]["note"]
    assert {flag["flag"] for flag in summary.flags} == {"missing"} and len(summary.flags) == len(TABLE)
