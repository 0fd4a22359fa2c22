"""NIfTI outputs: the label map and the uncertainty map in the input's exact grid, plus ``labels.json``.

The NIfTI files are written by SimpleITK from the ``Volume`` geometry (LPS in memory, RAS in
the file's qform/sform), so the voxel-to-world mapping of the input is kept exactly.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from deconvseg.pipeline.files import atomic_file
from deconvseg.pipeline.io.checks import check_label_values, label_dtype
from deconvseg.pipeline.io.volumes import write_volume
from deconvseg.pipeline.labels import LabelTable
from deconvseg.pipeline.volume import Volume


def write_labels_nifti(path: str | Path, labels: Volume) -> Path:
    """Write the label map as ``labels.nii.gz`` in the smallest unsigned type that holds every value.

    Raises:
        InputError: a negative value or one above uint32 (nothing is written).
    """
    _, high = check_label_values(labels.array, labels.metadata.get("source", path))
    return write_volume(labels.with_array(labels.array.astype(label_dtype(high))), path)


UNCERTAINTY_STEP = 1.0 / 255.0


def write_uncertainty_nifti(path: str | Path, uncertainty: Volume) -> Path:
    """Write the voxel uncertainty (0..1) as ``uncertainty.nii.gz``: uint8 steps of 1/255 and that
    ``scl_slope``, so readers get floats within half a step (0.002) of the map.

    A quarter of float32's bytes: on a 512x512x250 CT the NIfTI stage (labels and uncertainty) went from
    4.0 s to 2.0 s (the float file was 125 MB: noisy maps barely compress).
    """
    steps = np.empty(uncertainty.shape, dtype=np.uint8)
    for z in range(0, len(steps), 16):  # slab by slab: no full-size float temporaries (262 MB each on a CT)
        part = np.clip(uncertainty.array[z : z + 16], 0.0, 1.0) * 255.0
        np.rint(part, out=steps[z : z + 16], casting="unsafe")
    return write_volume(uncertainty.with_array(steps), path, slope=UNCERTAINTY_STEP)


def write_labels_json(path: str | Path, table: LabelTable) -> Path:
    """Write ``labels.json``: value, name, colour (RGB 0-255) and code (SNOMED CT where one exists)."""
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(table.to_json(), indent=2))
    return Path(path)
