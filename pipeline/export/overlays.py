"""PNG mosaics for a quick look: axial, coronal and sagittal label overlays and an uncertainty view.

Volumes are first turned to the closest LPS orientation (as ``SimpleITK.DICOMOrient`` does), so the views
follow the radiological convention whatever the input's direction matrix: axial seen from the
feet (patient's right on the image's left, anterior up), coronal seen from the front, sagittal
with anterior on the left; superior is up in both. Each slice is resized to square millimetres,
so the aspect ratio is the anatomy's, not the voxel grid's. Colours come from the label table.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk
from matplotlib import colormaps
from PIL import Image, ImageDraw

from deconvseg.pipeline.export.dense import dense_labels, index_of
from deconvseg.pipeline.files import atomic_file
from deconvseg.pipeline.io.sitk_bridge import to_sitk
from deconvseg.pipeline.labels import LabelTable
from deconvseg.pipeline.volume import Volume

CT_WINDOW = (-160.0, 240.0)  # soft-tissue window, level 40 HU / width 400 HU
VIEWS = ("axial", "coronal", "sagittal")


def _lps(volume: Volume) -> tuple[np.ndarray, tuple[float, float, float]]:
    """The array turned to LPS (``[z, y, x]``: x toward the left, y posterior, z superior) and its (x, y, z) spacing.

    An axis-aligned direction (a signed permutation, the usual case) is a transpose and flips of the
    array: views, no copy (``sitk.DICOMOrient`` copied the image, labels and uncertainty: 1.9 s on a
    512x512x250 CT). Oblique directions go to ``DICOMOrient``, which picks the closest axes.
    """
    direction = np.asarray(volume.direction, dtype=float)
    index_axis = np.abs(direction).argmax(axis=1)  # per world axis (x, y, z): the index axis along it
    signs = direction[np.arange(3), index_axis]
    if sorted(index_axis.tolist()) != [0, 1, 2] or not np.allclose(np.abs(signs), 1.0, atol=1e-6):
        image = sitk.DICOMOrient(to_sitk(volume), "LPS")
        return sitk.GetArrayFromImage(image), image.GetSpacing()
    array = volume.array.transpose([2 - int(i) for i in index_axis[::-1]])  # numpy axes are (z, y, x)
    flips = tuple(2 - w for w in range(3) if signs[w] < 0)
    sx, sy, sz = (float(volume.spacing[i]) for i in index_axis)
    return (np.flip(array, flips) if flips else array), (sx, sy, sz)


def _window(array: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    lo, hi = window
    return np.clip((array.astype(np.float32) - lo) / max(float(hi - lo), 1e-6), 0.0, 1.0)


def _take(array: np.ndarray, view: str, index: int) -> np.ndarray:
    """A 2D display slice (rows top to bottom, columns left to right) of an LPS ``[z, y, x]`` array."""
    if view == "axial":
        return array[index]
    if view == "coronal":
        return array[::-1, index, :]
    return array[::-1, :, index]


def _pixel_mm(view: str, spacing: tuple[float, float, float]) -> tuple[float, float]:
    """(row height, column width) in mm of a display slice."""
    sx, sy, sz = spacing
    return {"axial": (sy, sx), "coronal": (sz, sx), "sagittal": (sz, sy)}[view]


def _slice_indices(labels: np.ndarray, view: str, count: int) -> list[int]:
    axis = {"axial": 0, "coronal": 1, "sagittal": 2}[view]
    other = tuple(a for a in range(3) if a != axis)
    occupied = np.flatnonzero(labels.any(axis=other)) if labels.any() else np.arange(labels.shape[axis])
    lo, hi = int(occupied.min()), int(occupied.max())
    return sorted(set(np.linspace(lo, hi, min(count, hi - lo + 1) + 2)[1:-1].round().astype(int).tolist()) or {lo})


def _tile(rgb: np.ndarray, pixel_mm: tuple[float, float], tile_px: int, caption: str) -> Image.Image:
    height_mm, width_mm = rgb.shape[0] * pixel_mm[0], rgb.shape[1] * pixel_mm[1]
    scale = tile_px / max(height_mm, width_mm)
    if min(height_mm, width_mm) * scale < tile_px / 5:  # a thin slab: enlarge it, up to twice the tile size
        scale = min(tile_px / 5 / min(height_mm, width_mm), 2 * tile_px / max(height_mm, width_mm))
    size = (max(1, round(width_mm * scale)), max(1, round(height_mm * scale)))
    tile = Image.fromarray((rgb * 255).astype(np.uint8)).resize(size, Image.Resampling.NEAREST)
    ImageDraw.Draw(tile).text((3, 2), caption, fill=(255, 255, 0))
    return tile


def _mosaic(tiles: list[Image.Image]) -> Image.Image:
    width, height = max(t.width for t in tiles), max(t.height for t in tiles)
    columns = min(len(tiles), 4 if width <= 1.5 * height else 2)  # thin slabs: fewer, wider columns
    rows = -(-len(tiles) // columns)
    sheet = Image.new("RGB", (columns * width, rows * height))
    for n, tile in enumerate(tiles):
        sheet.paste(tile, ((n % columns) * width + (width - tile.width) // 2, (n // columns) * height))
    return sheet


def write_overlays(
    folder: str | Path,
    image: Volume,
    labels: Volume,
    table: LabelTable,
    uncertainty: Volume | None = None,
    *,
    slices: int = 8,
    tile_px: int = 256,
    alpha: float = 0.45,
) -> dict[str, Path]:
    """Write ``axial.png``, ``coronal.png``, ``sagittal.png`` (and ``uncertainty.png``) into ``folder``.

    Returns:
        View name -> written path.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    grey, spacing = _lps(image)
    window = CT_WINDOW if image.modality == "CT" else tuple(np.percentile(grey[::4, ::4, ::4], (1, 99)))
    dense, keys = dense_labels(labels.array, table.values)
    lab, _ = _lps(labels.with_array(dense))
    palette = np.zeros((len(keys), 3), dtype=np.float32)
    for label in table:
        palette[index_of(keys, label.value)] = np.asarray(label.color) / 255.0
    unc = _lps(uncertainty)[0] if uncertainty is not None else None
    heat = colormaps["inferno"]
    written = {}
    views = [(view, view) for view in VIEWS] + ([("uncertainty", "axial")] if unc is not None else [])
    for name, view in views:
        tiles = []
        for index in _slice_indices(lab, view, slices):
            g = _window(_take(grey, view, index), window)[..., None].repeat(3, axis=-1)
            if name == "uncertainty" and unc is not None:
                u = np.clip(_take(unc, view, index).astype(np.float32), 0.0, 1.0)
                rgb = 0.4 * g + 0.6 * heat(u)[..., :3]
            else:
                l2 = _take(lab, view, index)
                a = np.where(l2 > 0, alpha, 0.0)[..., None]
                rgb = g * (1 - a) + palette[l2] * a
            tiles.append(_tile(rgb, _pixel_mm(view, spacing), tile_px, f"{view[0]}{index}"))
        path = folder / f"{name}.png"
        with atomic_file(path) as tmp:
            _mosaic(tiles).save(tmp, format="PNG", compress_level=3)
        written[name] = path
    return written
