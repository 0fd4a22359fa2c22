"""report.html is self-contained and escapes what it shows; manifest.json hashes and versions."""

from __future__ import annotations

import hashlib
import json

import numpy as np
from PIL import Image

from deconvseg.pipeline.export.manifest import build_manifest, write_manifest
from deconvseg.pipeline.export.report import render_report


def test_report_inlines_images_and_escapes_names(tmp_path):
    png = tmp_path / "axial.png"
    Image.fromarray(np.full((4, 6, 3), 200, np.uint8)).save(png)
    row = {"value": 1, "name": "<script>alert(1)</script>", "color": [1, 2, 3], "volume_ml": 12.345, "voxels": 10,
           "mean_intensity": 40.0, "intensity_unit": "HU", "mean_uncertainty": None, "touches_border": True,
           "flags": ["implausible_volume"]}
    html = render_report([row], {"axial": png}, title="case <1>", notes=["model: a&b"])
    assert "<script>alert" not in html and "&lt;script&gt;" in html
    assert "case &lt;1&gt;" in html and "a&amp;b" in html
    assert "src='data:image/png;base64," in html and str(png) not in html
    assert "12.35" in html and "<td>yes</td><td class='flag'>implausible_volume</td>" in html


def test_manifest_hashes_inputs_and_records_versions(tmp_path):
    data = tmp_path / "image.nii.gz"
    data.write_bytes(b"not really an image")
    manifest = build_manifest({"image": [data]}, model={"name": "m"}, timings={"export.seg": 1.23456},
                              extra={"dicom_reference": {"origin": "source"}})
    assert manifest["inputs"]["image"][0]["sha256"] == hashlib.sha256(b"not really an image").hexdigest()
    assert manifest["timings_s"] == {"export.seg": 1.235}
    assert manifest["software"]["numpy"] == np.__version__ and manifest["software"]["python"]
    assert manifest["dicom_reference"] == {"origin": "source"}
    assert json.loads(write_manifest(tmp_path / "manifest.json", manifest).read_text()) == manifest
