"""Datasets as lists of ``Case``: the ACDC HDF5 folder, the MSD/nnU-Net layout, a CSV manifest.

ACDC (``../shared/data/acdc``) as preprocessed by SSL4MIS stores ``image`` (float32 scaled to
[0, 1]) and ``label`` (uint8: 0 background, 1 RV, 2 myocardium, 3 LV) per volume, axis order
``(z, y, x)``, and **no geometry**. We give every volume a nominal spacing (default 1.5625 x
1.5625 x 10 mm, x, y, z: the middle of ACDC's 1.37-1.68 mm in-plane range and its usual slice
step), origin 0 and identity direction, and mark it ``metadata["spacing_nominal"] = True`` so
that no one reports millilitres from it as if they were measured.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from deconvseg.pipeline.errors import InputError
from deconvseg.pipeline.io.volumes import read_volume
from deconvseg.pipeline.labels import LabelTable, generic_table
from deconvseg.pipeline.volume import Volume

log = logging.getLogger(__name__)

ACDC_NOMINAL_SPACING = (1.5625, 1.5625, 10.0)


@dataclass(frozen=True)
class Case:
    """One subject (or one phase of one): an image and, for training data, its label map.

    Attributes:
        case_id: a name unique within its dataset (e.g. ``patient002_frame01``).
        image: the intensity volume.
        label: the label map on the same grid, or ``None`` for unlabelled data.
    """

    case_id: str
    image: Volume
    label: Volume | None = None


def read_acdc(
    root: str | Path,
    split: str | Path | Sequence[str] | None = None,
    spacing: tuple[float, float, float] = ACDC_NOMINAL_SPACING,
) -> list[Case]:
    """Read ACDC volumes from ``root/volumes/*.h5``.

    Args:
        root: folder holding ``volumes/`` (and usually ``splits/``).
        split: ``None`` for every volume; a list file (one name per line, e.g.
            ``splits/train.list``); or a sequence of names such as ``"patient002_frame01"``.
        spacing: nominal voxel size (x, y, z) in mm; the files store none.

    Returns:
        Cases in the order of the split (sorted by name when ``split`` is ``None``).

    Raises:
        InputError: the folder, the list file or a named volume is missing or unreadable.
    """
    folder = Path(root) / "volumes"
    if not folder.is_dir():
        raise InputError(folder, "no ACDC 'volumes' folder here", "pass the folder that holds volumes/*.h5")
    if split is None:
        names = sorted(p.stem for p in folder.glob("*.h5"))
    elif isinstance(split, (str, Path)):
        names = _read_list(Path(split))
    else:
        names = list(split)
    if not names:
        raise InputError(folder, "no ACDC volumes selected", "check the split file or the folder contents")
    return [_read_acdc_volume(folder / f"{name}.h5", name, spacing) for name in names]


def _read_list(path: Path) -> list[str]:
    if not path.is_file():
        raise InputError(path, "split list not found", "pass a file with one volume name per line")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def _read_acdc_volume(path: Path, name: str, spacing: tuple[float, float, float]) -> Case:
    if not path.is_file():
        raise InputError(path, f"ACDC volume '{name}' not found", "check the name in the split list")
    try:
        with h5py.File(path, "r") as handle:
            image = np.asarray(handle["image"][()], dtype=np.float32)
            label = np.asarray(handle["label"][()], dtype=np.uint8)
    except (OSError, KeyError) as err:
        raise InputError(path, "unreadable ACDC HDF5 file (needs 'image' and 'label')", "re-copy the file") from err
    if image.ndim != 3 or image.shape != label.shape:
        raise InputError(path, f"image {image.shape} and label {label.shape} are not one 3D grid", "re-copy the file")
    meta = {"modality": "MR", "source": str(path), "spacing_nominal": True, "dataset": "acdc"}
    return Case(
        case_id=name,
        image=Volume(image, spacing=spacing, kind="image", metadata=meta),
        label=Volume(label, spacing=spacing, kind="label", metadata=dict(meta)),
    )


def read_msd(root: str | Path, channel: int | None = None) -> list[Case]:
    """Read the training cases of a Medical Segmentation Decathlon / nnU-Net v2 dataset.

    Understands MSD's ``dataset.json`` (a ``training`` list of ``{"image", "label"}`` paths and
    ``modality``) and nnU-Net v2's (``channel_names``, ``file_ending``; images named
    ``imagesTr/<case>_0000<ending>`` beside ``labelsTr/<case><ending>``).

    Args:
        root: the dataset folder holding ``dataset.json``, ``imagesTr/`` and ``labelsTr/``.
        channel: which channel of 4D images to keep (MSD stores multi-modal MR as 4D).

    Raises:
        InputError: ``dataset.json`` is missing or malformed, or a listed file is missing.
    """
    root = Path(root)
    spec = _read_dataset_json(root)
    modes = spec.get("modality") or spec.get("channel_names") or {}
    modality = str(modes.get("0", modes.get(0, ""))).upper() or None
    modality = "MR" if modality in ("MRI", "T1", "T2", "FLAIR", "ADC", "T2W") else modality
    if "training" in spec:
        pairs = [(root / item["image"], root / item["label"]) for item in spec["training"]]
    else:
        ending = spec.get("file_ending", ".nii.gz")
        labels = sorted((root / "labelsTr").glob(f"*{ending}"))
        pairs = [(root / "imagesTr" / f"{p.name[: -len(ending)]}_0000{ending}", p) for p in labels]
    if not pairs:
        raise InputError(root, "dataset.json lists no training cases", "check imagesTr/ and labelsTr/")
    cases = []
    for image_path, label_path in pairs:
        case_id = label_path.name.split(".")[0]
        image = read_volume(image_path, "image", channel=channel)
        label = _check_pair(read_volume(label_path, "label"), image, label_path)
        cases.append(Case(case_id, image.with_array(image.array, modality=modality), label))
    return cases


def _check_pair(label: Volume, image: Volume, label_path: Path) -> Volume:
    """Refuse a label map that is not on its image's grid (1e-3 mm tolerance for header rounding)."""
    if not label.same_grid(image, atol=1e-3):
        raise InputError(
            label_path,
            f"label grid {label.size} does not match its image's grid {image.size}",
            "resample the label map onto the image (nearest neighbour)",
        )
    return label


def read_msd_labels(root: str | Path) -> LabelTable:
    """The label table of an MSD/nnU-Net dataset from its ``dataset.json`` (fixed colours, no codes)."""
    labels = _read_dataset_json(Path(root)).get("labels", {})
    # MSD maps "value" -> name; nnU-Net v2 maps name -> value.
    pairs = (
        {int(k): v for k, v in labels.items()}
        if all(str(k).isdigit() for k in labels)
        else {int(v): k for k, v in labels.items()}
    )
    table = generic_table(list(pairs))
    return LabelTable.from_json([{**item, "name": pairs[item["value"]]} for item in table.to_json()])


def _read_dataset_json(root: Path) -> dict:
    path = root / "dataset.json"
    if not path.is_file():
        raise InputError(path, "no dataset.json (MSD/nnU-Net layout)", "pass the dataset folder that holds it")
    try:
        spec = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise InputError(path, f"not valid JSON (line {err.lineno})", "fix the file") from err
    if not isinstance(spec, dict):
        raise InputError(path, "top level is not an object", "fix the file")
    return spec


def read_manifest_rows(path: str | Path) -> list[dict[str, str]]:
    """The rows of a CSV manifest (``case_id,image[,label][,modality]``), checked but not loaded.

    Relative ``image``/``label`` paths are returned resolved against the CSV file's folder; an
    empty ``label`` or ``modality`` stays empty.

    Raises:
        InputError: the file is missing, lacks a column, or repeats a case id.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "manifest not found", "check the path")
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        missing = {"case_id", "image"} - set(reader.fieldnames or [])
        if missing:
            raise InputError(path, f"missing column(s) {sorted(missing)}", "add a header line: case_id,image,label")
        rows = list(reader)
    ids = [row["case_id"] for row in rows]
    if len(set(ids)) != len(ids):
        raise InputError(path, "case_id values repeat", "give every row its own case_id")
    for row in rows:
        for column in ("image", "label"):
            if row.get(column):
                row[column] = str((path.parent / row[column]).resolve())
    return rows


def read_manifest(path: str | Path) -> list[Case]:
    """Read the cases listed in a CSV manifest (see ``read_manifest_rows``); ``image`` may be a
    file or a DICOM series folder.

    Raises:
        InputError: the file is missing, lacks a column, repeats a case id, or an image or label
            cannot be read or its label is off the image's grid.
    """
    rows = read_manifest_rows(path)
    cases = []
    for row in rows:
        image = read_volume(row["image"], "image")
        if row.get("modality"):
            image = image.with_array(image.array, modality=row["modality"].upper())
        label = None
        if row.get("label"):
            label = _check_pair(read_volume(row["label"], "label"), image, Path(row["label"]))
        cases.append(Case(row["case_id"], image, label))
    log.info("read %d cases from %s", len(cases), path)
    return cases
