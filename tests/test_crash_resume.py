"""Crash safety of the review bundle, below the batch flow (``tests/test_reliability_flows.py`` holds the
batch-level SIGKILL drill): a bundle is deterministic up to a documented list of volatile fields, and a
writer killed with SIGKILL while replacing a bundle leaves either the old or the new bundle whole, never
a mixture; what it leaves beside it is hidden and swept by ``deconvseg.flows.outputs.sweep_partial``.

Volatile fields (the time of writing, not the content; everything else is byte-identical across runs):

- ``manifest.json``: ``created`` and ``timings_s``.
- ``seg.dcm`` (highdicom): Instance Creation and Content date/time, the Contributing Equipment's
  Contribution DateTime, and the Dimension Organization UID (highdicom generates a random one).
- ``rtstruct.dcm``: Instance Creation and Structure Set date/time.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pydicom

from deconvseg.flows.outputs import sweep_partial
from flows_support import REPO, TINY_SHAPE, TINY_SPACING
from deconvseg.pipeline.export.bundle import write_bundle
from deconvseg.pipeline.io.volumes import read_volume, write_volume
from deconvseg.pipeline.phantoms import PHANTOM_LABELS, make_phantom
from tests.test_io_dicom import write_series

MANIFEST_VOLATILE = ("created", "timings_s")
DICOM_VOLATILE = ("InstanceCreationDate", "InstanceCreationTime", "ContentDate", "ContentTime", "StructureSetDate",
                  "StructureSetTime", "ContributionDateTime", "DimensionOrganizationUID")


def _dicom_digest(path: Path) -> str:
    ds = pydicom.dcmread(path)

    def scrub(dataset: pydicom.Dataset) -> None:
        for element in list(dataset):
            if element.keyword in DICOM_VOLATILE:
                del dataset[element.tag]
            elif element.VR == "SQ":
                for item in element.value:
                    scrub(item)

    scrub(ds)
    return hashlib.sha256(str(ds).encode() + ds.get("PixelData", b"")).hexdigest()


def fingerprint(bundle: Path) -> dict[str, str]:
    """Relative path -> digest of every file of ``bundle``, volatile fields masked (module docstring)."""
    digests = {}
    for path in sorted(p for p in bundle.rglob("*") if p.is_file()):
        if path.name == "manifest.json":
            record = {k: v for k, v in json.loads(path.read_text()).items() if k not in MANIFEST_VOLATILE}
            data = json.dumps(record, sort_keys=True).encode()
        elif path.suffix == ".dcm" and path.parent == bundle:
            data = _dicom_digest(path).encode()
        else:
            data = path.read_bytes()
        digests[str(path.relative_to(bundle))] = hashlib.sha256(data).hexdigest()
    return digests


def _inputs(folder: Path) -> tuple[Path, Path, Path]:
    image, labels = make_phantom("CT", shape=TINY_SHAPE, spacing=TINY_SPACING, seed=3)
    folder.mkdir(parents=True, exist_ok=True)
    other = labels.with_array(np.where(labels.array == 1, 0, labels.array).astype(labels.array.dtype))
    return (write_volume(image, folder / "image.nii.gz"), write_volume(labels, folder / "labels.nii.gz"),
            write_volume(other, folder / "other.nii.gz"))


def test_bundles_are_identical_across_runs_except_the_documented_volatile_fields(tmp_path):
    image_path, labels_path, _ = _inputs(tmp_path / "in")
    series = tmp_path / "series"
    image = read_volume(image_path)
    write_series(series, image.array.astype(np.int16), spacing=image.spacing, origin=image.origin)
    dicom_image = read_volume(series)
    labels = read_volume(labels_path, kind="label")
    dicom_labels = dicom_image.with_array(labels.array.astype(np.uint8), kind="label")
    runs = []
    for run in ("a", "b"):
        write_bundle(tmp_path / run / "nifti", image, labels, PHANTOM_LABELS, manifest={"timings_s": {"x": 1.0 + (run == "b")}})
        write_bundle(tmp_path / run / "dicom", dicom_image, dicom_labels, PHANTOM_LABELS)
        runs.append({case: fingerprint(tmp_path / run / case) for case in ("nifti", "dicom")})
        time.sleep(1.1)  # so every time stamp differs between the runs
    assert {"seg.dcm", "rtstruct.dcm", "report.html", "labels.seg.nrrd"} <= set(runs[0]["dicom"])
    assert runs[0] == runs[1]
    for name in ("report.html", "stats.json", "labels.nii.gz", "labels.seg.nrrd", "overlays/axial.png"):  # as they are
        assert (tmp_path / "a" / "dicom" / name).read_bytes() == (tmp_path / "b" / "dicom" / name).read_bytes()


WRITER = """
import itertools, sys
from pathlib import Path
from deconvseg.pipeline.export.bundle import write_bundle
from deconvseg.pipeline.io.volumes import read_volume
from deconvseg.pipeline.phantoms import PHANTOM_LABELS

image_path, labels_path, other_path, out = sys.argv[1:5]
image = read_volume(image_path)
versions = [read_volume(labels_path, kind="label"), read_volume(other_path, kind="label")]
for n in itertools.count():
    write_bundle(Path(out) / "case", image, versions[n % 2], PHANTOM_LABELS, manifest={"n": 0})
    print(n, flush=True)
"""


def test_a_writer_killed_while_replacing_a_bundle_leaves_old_or_new_whole(tmp_path):
    image_path, labels_path, other_path = _inputs(tmp_path / "in")
    image = read_volume(image_path)
    references = []
    for index, path in enumerate((labels_path, other_path)):
        reference = tmp_path / f"ref{index}" / "case"  # same name: the report's title is the bundle's name
        write_bundle(reference, image, read_volume(path, kind="label"), PHANTOM_LABELS, manifest={"n": 0})
        references.append(fingerprint(reference))
    assert references[0] != references[1]
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(image_path), str(labels_path), str(other_path),
                               str(out)], env=env, cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        for _ in range(2):  # two bundles written, the third is being written or swapped in
            assert writer.stdout.readline(), "the writer died"
        time.sleep(np.random.default_rng().uniform(0.0, 0.5))
    finally:
        os.kill(writer.pid, signal.SIGKILL)
        writer.wait()
    leftovers = sorted(p.name for p in out.iterdir() if p.name != "case")
    assert all(name.startswith((".case.tmp-", ".case.old-")) for name in leftovers), leftovers
    if (out / "case").exists():  # absent only when killed between the two renames of the swap
        assert fingerprint(out / "case") in references
    sweep_partial(out, ["case"])
    assert sorted(p.name for p in out.iterdir()) in (["case"], [])
