"""Synthetic cases and independent read-back helpers for the export tests.

Every read-back compares what a file holds at a WORLD position with what the source ``Volume``
holds there, through the reader's own affine, so a flipped or permuted export cannot pass.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from deconvseg.pipeline.labels import Code, Label, LabelTable
from deconvseg.pipeline.volume import Volume

TABLE = LabelTable(
    (
        Label(1, "liver", (221, 130, 101), Code("10200004", "Liver structure")),
        Label(2, "box", (128, 174, 128)),
        Label(3, "ring", (111, 184, 210)),
        Label(5, "absent", (230, 220, 70)),
    )
)


def _rotation(ax: float, ay: float, az: float) -> np.ndarray:
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


GEOMETRIES = {
    "lps": np.eye(3),
    "ras": np.diag([-1.0, -1.0, 1.0]),
    "negated": -np.eye(3),
    "oblique": _rotation(np.radians(12), np.radians(-7), np.radians(30)),
}


def make_case(geometry: str, shape: tuple[int, int, int] = (9, 22, 26), seed: int = 3) -> tuple[Volume, Volume]:
    """A CT-like image and a label map (sphere, box, ring with a hole, one border-touching box)."""
    rng = np.random.default_rng(seed)
    z, y, x = np.indices(shape)
    labels = np.zeros(shape, dtype=np.uint8)
    labels[(z - 4) ** 2 * 4 + (y - 8) ** 2 + (x - 9) ** 2 <= 25] = 1
    labels[2:7, 14:20, 16:22] = 2
    ring = ((y - 16) ** 2 + (x - 7) ** 2 <= 12) & ((y - 16) ** 2 + (x - 7) ** 2 > 2) & (z >= 5) & (z <= 7)
    labels[ring] = 3
    labels[0:3, 0:3, 23:26] = 2  # touches the border
    image = (rng.normal(40, 10, shape) + 30 * labels).astype(np.int16)
    geometry_kwargs = dict(spacing=(0.8, 1.1, 2.5), origin=(-12.5, 30.25, -80.0), direction=GEOMETRIES[geometry])
    return (
        Volume(image, kind="image", metadata={"modality": "CT", "source": f"synthetic:{geometry}"}, **geometry_kwargs),
        Volume(labels, kind="label", metadata={"source": f"synthetic:{geometry}"}, **geometry_kwargs),
    )


def sample_by_world(array: np.ndarray, index_to_world: np.ndarray, target: Volume, atol: float = 1e-3,
                    outside: float | None = None) -> np.ndarray:
    """Values of ``array`` (indexed in its own order, mapped to LPS by the 4x4 ``index_to_world``)
    at the voxel centres of ``target``, as a ``target``-shaped array.

    Fails unless the voxel centres coincide (the index mapping is a signed axis permutation with
    an integer offset); centres outside ``array`` fail too unless ``outside`` gives their value
    (for files that omit empty slices).
    """
    target_affine = target.affine_lps()[:, [2, 1, 0, 3]]  # from target's (k, j, i) array order
    mapping = np.linalg.inv(index_to_world) @ target_affine
    assert np.abs(mapping - np.round(mapping)).max() < atol, "voxel centres do not coincide"
    mapping = np.round(mapping).astype(int)
    grids = np.ogrid[tuple(slice(0, n) for n in target.shape)]
    idx = [mapping[a, 0] * grids[0] + mapping[a, 1] * grids[1] + mapping[a, 2] * grids[2] + mapping[a, 3] for a in range(3)]
    idx = np.broadcast_arrays(*idx)
    inside = np.ones(target.shape, dtype=bool)
    for a in range(3):
        inside &= (idx[a] >= 0) & (idx[a] < array.shape[a])
    assert outside is not None or inside.all(), "voxel centres fall outside the file"
    values = np.full(target.shape, outside if outside is not None else 0, dtype=array.dtype)
    values[inside] = array[idx[0][inside], idx[1][inside], idx[2][inside]]
    return values


def sitk_affine(image) -> np.ndarray:
    """4x4 from SimpleITK array order ``[z, y, x]`` to LPS."""
    direction = np.asarray(image.GetDirection()).reshape(3, 3) @ np.diag(image.GetSpacing())
    affine = np.eye(4)
    affine[:3, :3] = direction[:, ::-1]  # columns for z, y, x
    affine[:3, 3] = image.GetOrigin()
    return affine


def dciodvfy_errors(path: Path) -> list[str]:
    """``Error`` lines of dicom3tools' validator (skips the test where it is not installed)."""
    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy (Debian package dicom3tools) is not installed; .ci/run installs it")
    result = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=120)
    return [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")]


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


def rasterise_rtstruct(path: Path, target: Volume, names: set[str] | None = None
                       ) -> tuple[dict[str, np.ndarray], dict[str, set[tuple[int, str]]]]:
    """Masks of the ROIs (all, or those in ``names``) on ``target``'s grid (even-odd fill of the
    contours, placed by their world coordinates) and, per ROI, ``(slice, referenced image UID)``."""
    import pydicom
    from skimage.draw import polygon2mask

    rt = pydicom.dcmread(path)
    names_by_number = {roi.ROINumber: roi.ROIName for roi in rt.StructureSetROISequence}
    masks, referenced = {}, {}
    for roi in rt.ROIContourSequence:
        if names is not None and names_by_number[roi.ReferencedROINumber] not in names:
            continue
        mask = np.zeros(target.shape, dtype=bool)
        slices = set()
        for contour in roi.ContourSequence:
            assert contour.ContourGeometricType == "CLOSED_PLANAR"
            points = np.asarray(contour.ContourData, dtype=float).reshape(-1, 3)
            assert len(points) == contour.NumberOfContourPoints
            ijk = target.world_to_index(points)
            k = int(round(ijk[0, 2]))
            assert np.abs(ijk[:, 2] - k).max() < 1e-3, "contour is not on a slice plane"
            mask[k] ^= polygon2mask(target.shape[1:], ijk[:, [1, 0]])
            slices.add((k, str(contour.ContourImageSequence[0].ReferencedSOPInstanceUID)))
        masks[names_by_number[roi.ReferencedROINumber]] = mask
        referenced[names_by_number[roi.ReferencedROINumber]] = slices
    return masks, referenced
