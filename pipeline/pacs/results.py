"""Our result objects (the bundle's ``seg.dcm`` and ``rtstruct.dcm``) made ready for where they go."""

from __future__ import annotations

from pathlib import Path

import pydicom

from deconvseg.pipeline.files import atomic_file
from deconvseg.pipeline.sanitize import deidentify_dataset


def set_series_description(paths: list[Path], description: str) -> None:
    """Write ``description`` into the SeriesDescription of each DICOM file (each file replaced atomically)."""
    for path in paths:
        ds = pydicom.dcmread(path)
        ds.SeriesDescription = description
        with atomic_file(path) as tmp:
            ds.save_as(tmp, enforce_file_format=True)


def deidentify_files(paths: list[Path], pseudonym: str) -> None:
    """Replace each DICOM file by its de-identified copy (``deconvseg.pipeline.sanitize.deidentify_dataset``,
    PatientID = ``pseudonym``), atomically."""
    for path in paths:
        ds = deidentify_dataset(pydicom.dcmread(path), pseudonym)
        with atomic_file(path) as tmp:
            ds.save_as(tmp, enforce_file_format=True)
