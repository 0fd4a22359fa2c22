"""The one volume type that travels through the pipeline.

Axis convention (declared here, converted only at the I/O boundary):
    ``array`` is indexed ``array[z, y, x]`` -- SimpleITK/numpy order, which is also torch's
    ``(D, H, W)``. ``spacing``, ``origin`` and the columns of ``direction`` are given in
    ``(x, y, z)`` order in the DICOM/ITK patient frame (LPS, millimetres). The world point of
    voxel index ``(i, j, k)`` (x, y, z order; ``array[k, j, i]``) is
    ``origin + direction @ (spacing * (i, j, k))``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

Kind = Literal["image", "label"]
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


@dataclass(frozen=True, eq=False)
class Volume:
    """A 3D array with its physical geometry.

    Attributes:
        array: voxels, indexed ``[z, y, x]``.
        spacing: voxel size in mm, ``(x, y, z)``.
        origin: world position (LPS, mm) of the centre of voxel ``(0, 0, 0)``.
        direction: 3x3 matrix whose columns are the unit world directions of the x, y, z axes.
        kind: ``"image"`` (intensities; linear interpolation) or ``"label"`` (nearest only).
        metadata: modality, DICOM UIDs and tags needed for export, source path, ...
    """

    array: np.ndarray
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: np.ndarray = field(default_factory=lambda: np.eye(3))
    kind: Kind = "image"
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.array.ndim != 3:
            raise ValueError(f"Volume needs a 3D array, got shape {self.array.shape}")
        object.__setattr__(self, "spacing", tuple(float(s) for s in self.spacing))
        object.__setattr__(self, "origin", tuple(float(o) for o in self.origin))
        object.__setattr__(self, "direction", np.asarray(self.direction, dtype=float).reshape(3, 3))
        if self.kind not in ("image", "label"):
            raise ValueError(f"Volume kind must be 'image' or 'label', got {self.kind!r}")

    @property
    def shape(self) -> tuple[int, int, int]:
        """Array shape, ``(z, y, x)``."""
        return tuple(self.array.shape)

    @property
    def size(self) -> tuple[int, int, int]:
        """Number of voxels along x, y, z (SimpleITK's ``GetSize``)."""
        return tuple(reversed(self.array.shape))

    @property
    def voxel_volume_ml(self) -> float:
        """Volume of one voxel in millilitres (1 mL = 1000 mm^3)."""
        return float(np.prod(self.spacing)) / 1000.0

    @property
    def modality(self) -> str | None:
        return self.metadata.get("modality")

    def affine_lps(self) -> np.ndarray:
        """4x4 matrix mapping homogeneous ``(i, j, k, 1)`` (x, y, z order) to LPS mm."""
        affine = np.eye(4)
        affine[:3, :3] = self.direction @ np.diag(self.spacing)
        affine[:3, 3] = self.origin
        return affine

    def affine_ras(self) -> np.ndarray:
        """The same mapping into RAS mm (NIfTI's world frame)."""
        affine = self.affine_lps()
        affine[:3, :] = LPS_TO_RAS @ affine[:3, :]
        return affine

    def index_to_world(self, ijk: npt.ArrayLike) -> np.ndarray:
        """World (LPS) points of voxel indices given as rows of ``(i, j, k)`` in x, y, z order."""
        ijk = np.atleast_2d(np.asarray(ijk, dtype=float))
        return ijk @ (self.direction @ np.diag(self.spacing)).T + np.asarray(self.origin)

    def world_to_index(self, xyz: np.ndarray) -> np.ndarray:
        """Continuous voxel indices ``(i, j, k)`` of world (LPS) points given as rows."""
        xyz = np.atleast_2d(np.asarray(xyz, dtype=float))
        inverse = np.linalg.inv(self.direction @ np.diag(self.spacing))
        return (xyz - np.asarray(self.origin)) @ inverse.T

    def same_grid(self, other: Volume, atol: float = 1e-4) -> bool:
        """True when both volumes have the same shape and the same voxel-to-world mapping."""
        return self.shape == other.shape and np.allclose(self.affine_lps(), other.affine_lps(), atol=atol)

    def with_array(self, array: np.ndarray, kind: Kind | None = None, **metadata: Any) -> Volume:
        """A volume on the same grid holding ``array`` (a new object; ``self`` is unchanged)."""
        if array.shape != self.shape:
            raise ValueError(f"array shape {array.shape} does not match volume shape {self.shape}")
        return replace(self, array=array, kind=kind or self.kind, metadata={**self.metadata, **metadata})
