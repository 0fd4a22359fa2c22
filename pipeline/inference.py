"""Run one network over a volume with Gaussian-weighted sliding windows; map results between grids.

Stitching (Isensee et al., nnU-Net, Nat. Methods 2021): windows of the training patch size tile the
volume with a given overlap, every window's output is weighted by a Gaussian centred on the window
(``w(v) = exp(-|v - c|^2 / (2 sigma^2))``, ``sigma = patch / 8`` per axis), and each voxel gets

    y(v) = sum_k w_k(v) f(x_k)(v) / sum_k w_k(v),

so any predictor ``f`` that is a voxel-wise map (``lambda x: 2 * x``) comes back exactly.

Memory stays bounded: outputs are accumulated on the (coarse) working grid only, and results are
brought to the input grid slab by slab (``restore_labels``, ``restore_map``), never as C full-resolution maps.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from deconvseg.pipeline.patches import context_crop
from deconvseg.pipeline.volume import Volume

Predictor = Callable[..., torch.Tensor]


def gaussian_importance(patch_size: Sequence[int], sigma_scale: float = 0.125) -> torch.Tensor:
    """Gaussian window weights of shape ``patch_size``, max 1, strictly positive everywhere."""
    axes = []
    for n in patch_size:
        offset = torch.arange(n, dtype=torch.float64) - (n - 1) / 2
        axes.append(torch.exp(-(offset**2) / (2 * (sigma_scale * n) ** 2)))
    weights = axes[0][:, None, None] * axes[1][None, :, None] * axes[2][None, None, :]
    weights = weights / weights.max()
    return weights.clamp_min(1e-3).float()


def window_starts(size: int, patch: int, overlap: float) -> list[int]:
    """First voxel of each window along one axis: evenly spread, first at 0, last flush with the end."""
    if size <= patch:
        return [0]
    step = max(1, int(patch * (1.0 - overlap)))
    count = math.ceil((size - patch) / step) + 1
    return [round(i * (size - patch) / (count - 1)) for i in range(count)]


def prepare_predictor(
    model: nn.Module,
    *,
    bf16: bool = False,
    channels_last: bool = False,
    compile: bool = False,
    device: str = "cpu",
) -> Predictor:
    """Wrap a network as a predictor with the speed switches (the module is moved, not copied).

    Args:
        model: a network in eval mode; called as ``model(local)`` or ``model(local, context)``.
        bf16: run under bfloat16 autocast (2.2x on these CPUs; check accuracy per model).
        channels_last: convert weights and inputs to ``channels_last_3d``.
        compile: ``torch.compile`` with inductor weight freezing (first call compiles, ~10 s).
        device: torch device of the model and its inputs.

    Returns:
        ``predict(*inputs) -> float32 logits`` (no gradients are recorded).
    """
    model = model.eval().to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last_3d)
    net = torch.compile(model, options={"freezing": True}) if compile else model
    fmt = torch.channels_last_3d if channels_last else torch.contiguous_format
    device_type = torch.device(device).type

    def predict(*inputs: torch.Tensor) -> torch.Tensor:
        tensors = [x.to(device).contiguous(memory_format=fmt) for x in inputs]
        with torch.inference_mode(), torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16):
            return net(*tensors).float()

    return predict


def sliding_window(
    image: np.ndarray,
    predictor: Predictor,
    patch_size: Sequence[int],
    *,
    overlap: float = 0.5,
    batch_size: int = 1,
    mirror_axes: Sequence[int] = (),
    context_factor: Sequence[int] | None = None,
) -> torch.Tensor:
    """Gaussian-weighted sliding-window output of ``predictor`` over a whole volume.

    Args:
        image: ``(z, y, x)`` or ``(channels, z, y, x)`` float array (normalised).
        predictor: maps ``(B, channels, *patch)`` (and, for two-scale nets, a context tensor of the
            same shape) to ``(B, C, *patch)``.
        patch_size: window ``(z, y, x)``; the volume is zero-padded where it is smaller.
        overlap: fraction of a window shared with its neighbour along each axis, in ``[0, 1)``.
        batch_size: windows per predictor call.
        mirror_axes: spatial axes (0=z, 1=y, 2=x) to mirror for test-time augmentation; the
            outputs of all ``2^k`` flip combinations are averaged.
        context_factor: ``(z, y, x)`` factor of a two-scale network's context input
            (``deconvseg.pipeline.patches.context_crop``); ``None`` for single-input networks.

    Returns:
        float32 tensor ``(C, z, y, x)`` on the CPU.

    Raises:
        ValueError: for an overlap outside ``[0, 1)`` or an image that is not 3D/4D.
    """
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must lie in [0, 1), got {overlap}")
    if image.ndim not in (3, 4):
        raise ValueError(f"image must be (z, y, x) or (channels, z, y, x), got shape {image.shape}")
    source = np.asarray(image, dtype=np.float32)
    source = source[None] if source.ndim == 3 else source
    shape = source.shape[-3:]
    patch = [int(p) for p in patch_size]
    pad = [max(p - s, 0) for p, s in zip(patch, shape)]
    before = [p // 2 for p in pad]
    padded = np.pad(source, [(0, 0)] + [(b, p - b) for b, p in zip(before, pad)]) if any(pad) else source
    padded_t = torch.from_numpy(padded)
    full = padded.shape[-3:]
    starts = list(itertools.product(*(window_starts(n, p, overlap) for n, p in zip(full, patch))))
    weight = gaussian_importance(patch)
    flips = [list(c) for k in range(len(mirror_axes) + 1) for c in itertools.combinations([a + 2 for a in mirror_axes], k)]

    acc: torch.Tensor | None = None
    norm = torch.zeros(full, dtype=torch.float32)
    with torch.inference_mode():
        for first in range(0, len(starts), batch_size):
            group = starts[first : first + batch_size]
            boxes = [tuple(slice(s, s + p) for s, p in zip(start, patch)) for start in group]
            local = torch.stack([padded_t[(slice(None), *box)] for box in boxes])
            inputs = [local]
            if context_factor is not None:
                centers = [[s + p // 2 - b for s, p, b in zip(start, patch, before)] for start in group]
                inputs.append(torch.from_numpy(np.stack([context_crop(source, c, patch, context_factor) for c in centers])))
            out = sum(_flip(predictor(*[_flip(x, f) for x in inputs]).float(), f) for f in flips) / len(flips)
            if acc is None:
                acc = torch.zeros((out.shape[1], *full), dtype=torch.float32)
            for box, window in zip(boxes, out):
                acc[(slice(None), *box)] += window * weight
                norm[box] += weight
        acc /= norm
    crop = tuple(slice(b, b + s) for b, s in zip(before, shape))
    return acc[(slice(None), *crop)].contiguous()


def _flip(x: torch.Tensor, dims: list[int]) -> torch.Tensor:
    return x.flip(dims) if dims else x


def grid_coordinates(source: Volume, target: Volume) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Continuous ``source`` indices (z, y, x axes) of every ``target`` index along that axis.

    Both grids must share their direction (a working grid made by resampling the input does).

    Raises:
        ValueError: when the directions differ.
    """
    if not np.allclose(source.direction, target.direction, atol=1e-5):
        raise ValueError("source and target grids must share their direction; resample one onto the other first")
    offset = np.linalg.solve(source.direction @ np.diag(source.spacing), np.subtract(target.origin, source.origin))
    ratio = np.divide(target.spacing, source.spacing)
    xyz = [offset[a] + ratio[a] * np.arange(target.size[a]) for a in range(3)]
    return xyz[2], xyz[1], xyz[0]


class _Axis:
    """Linear-interpolation table along one axis: lower/upper source index and upper weight.

    ``scale`` is set when the grids' outer voxel edges coincide (``coords[i] = (i + 1/2) r - 1/2``,
    as for grids made by ``deconvseg.pipeline.resample.grid_at_spacing``): then ``torch``'s optimised
    ``interpolate`` (``align_corners=False``, ``scale_factor = 1/r``) computes the same samples.
    """

    def __init__(self, coords: np.ndarray, n: int) -> None:
        c = np.clip(coords, 0.0, n - 1.0)
        self.lower = np.minimum(np.floor(c), max(n - 2, 0)).astype(np.intp)
        self.upper = np.minimum(self.lower + 1, n - 1)
        self.weight = (c - self.lower).astype(np.float32)
        ratio = float(coords[1] - coords[0]) if coords.size > 1 else 1.0
        edges = (np.arange(coords.size) + 0.5) * ratio - 0.5
        self.scale = 1.0 / ratio if ratio > 0 and np.allclose(coords, edges, atol=1e-4) else None
        self.size = coords.size


def _tables(source: Volume, target: Volume) -> list[_Axis]:
    return [_Axis(c, n) for c, n in zip(grid_coordinates(source, target), source.shape)]


def _slab(values: np.ndarray, axes: list[_Axis], part: slice, rows: slice = slice(None), cols: slice = slice(None),
          out: np.ndarray | None = None) -> np.ndarray:
    """Separable trilinear interpolation of ``(C, z, y, x)`` values at target z-slices ``part``, ``rows``, ``cols``."""
    z, y, x = axes
    block = torch.lerp(torch.from_numpy(values[:, z.lower[part]]), torch.from_numpy(values[:, z.upper[part]]),
                       torch.from_numpy(z.weight[part][:, None, None]))
    if y.scale and x.scale:
        channels, depth = block.shape[:2]
        flat = block.reshape(1, channels * depth, *block.shape[2:])
        short = [max(math.ceil(a.size / a.scale) - n, 0) for a, n in zip((y, x), flat.shape[2:])]
        if any(short):  # one replicated voxel lets floor(n * scale) reach the target size
            flat = F.pad(flat, (0, short[1], 0, short[0]), mode="replicate")
        plane = F.interpolate(flat, scale_factor=(y.scale, x.scale), mode="bilinear", align_corners=False,
                              recompute_scale_factor=False)
        plane = plane.reshape(channels, depth, *plane.shape[2:])[:, :, : y.size, : x.size][:, :, rows, cols]
        if out is None:
            return plane.numpy()
        torch.from_numpy(out).copy_(plane)
        return out
    block = block.numpy()
    block = torch.lerp(torch.from_numpy(np.take(block, y.lower[rows], axis=2)),
                       torch.from_numpy(np.take(block, y.upper[rows], axis=2)), torch.from_numpy(y.weight[rows][:, None]))
    block = block.numpy()
    low, high = torch.from_numpy(np.take(block, x.lower[cols], axis=3)), torch.from_numpy(np.take(block, x.upper[cols], axis=3))
    if out is None:
        return torch.lerp(low, high, torch.from_numpy(x.weight[cols])).numpy()
    torch.lerp(low, high, torch.from_numpy(x.weight[cols]), out=torch.from_numpy(out))
    return out


def _span(hit: np.ndarray) -> slice:
    """The slice from the first to the last true entry of a 1D mask."""
    index = np.flatnonzero(hit)
    return slice(int(index[0]), int(index[-1]) + 1)


def _gather(array: np.ndarray, axes: list[_Axis], part: slice) -> np.ndarray:
    """Value of each target voxel's lower-corner source voxel (nearest-below), for z-slices ``part``."""
    z, y, x = axes
    return np.take(np.take(np.take(array, z.lower[part], axis=0), y.lower, axis=1), x.lower, axis=2)


def _points(values: np.ndarray, axes: list[_Axis], part: slice, index: tuple[np.ndarray, ...]) -> np.ndarray:
    """Trilinear interpolation of ``(C, z, y, x)`` values at the target voxels ``index`` of the slab (``(C, M)``)."""
    flat = values.reshape(values.shape[0], -1)
    _, ny, nx = values.shape[1:]
    out = np.zeros((values.shape[0], index[0].size), dtype=np.float32)
    corners = [((a.lower[i], 1.0 - a.weight[i]), (a.upper[i], a.weight[i]))
               for a, i in zip(axes, (index[0] + part.start, index[1], index[2]))]
    for (zs, wz), (ys, wy), (xs, wx) in itertools.product(*corners):
        out += np.take(flat, (zs * ny + ys) * nx + xs, axis=1) * (wz * wy * wx)
    return out


def restore_labels(
    labels: np.ndarray,
    confidence: np.ndarray,
    source: Volume,
    target: Volume,
    slab: int = 16,
    dense_fraction: float = 0.25,
) -> np.ndarray:
    """Label map on ``target`` that only ever takes labels of the neighbouring ``source`` voxels.

    Each class scores ``s_c(v) = sum_corners w_i * conf_i * [label_i == c]`` over the 8 source voxels
    around target voxel ``v`` (trilinear weights ``w_i``), and ``v`` takes the best class. Where all
    8 neighbours agree (most of a volume) the label is copied; the scores are computed only for the
    remaining boundary voxels, or densely (over the boundary's bounding rectangle) for a slab
    whose boundary fraction exceeds ``dense_fraction``. Both ways give the same result; memory is one slab of scores.

    Args:
        labels: label values on ``source`` (e.g. the refined, fused map).
        confidence: fused probability of each voxel's label on ``source`` (1 where refinement set it).
        source: the working grid (geometry of ``labels``).
        target: the output grid (only its geometry and shape are used).
        slab: target z-slices processed at once.
        dense_fraction: boundary fraction above which a slab is interpolated densely.

    Returns:
        uint8 array of ``target.shape``.
    """
    values = np.unique(labels).astype(np.uint8)
    conf = np.ascontiguousarray(confidence, dtype=np.float32)
    scores = np.stack([np.where(labels == v, conf, np.float32(0)) for v in values])
    n = labels.shape
    shifted = [np.minimum(np.arange(k) + 1, k - 1) for k in n]
    uniform = np.ones(n, dtype=bool)
    for dz, dy, dx in itertools.product((0, 1), repeat=3):
        corner = labels[np.ix_(*[s if d else np.arange(k) for s, d, k in zip(shifted, (dz, dy, dx), n)])]
        uniform &= corner == labels
    axes = _tables(source, target)
    out = np.empty(target.shape, dtype=np.uint8)
    for start in range(0, target.shape[0], slab):
        part = slice(start, min(start + slab, target.shape[0]))
        block = _gather(labels, axes, part)
        boundary = ~_gather(uniform, axes, part)
        if boundary.mean() > dense_fraction:
            rows, cols = (_span(boundary.any(axis=axis)) for axis in ((0, 2), (0, 1)))
            block[:, rows, cols] = values[_slab(scores, axes, part, rows, cols).argmax(0)]
        elif boundary.any():
            index = np.nonzero(boundary)
            block[index] = values[_points(scores, axes, part, index).argmax(0)]
        out[part] = block
    return out


def restore_map(values: np.ndarray, source: Volume, target: Volume, slab: int = 16) -> np.ndarray:
    """Trilinear interpolation of ``(*source.shape)`` or ``(C, *source.shape)`` values onto ``target``.

    Returns:
        float32 array of ``target.shape`` (with the leading ``C`` axis when ``values`` had one).
    """
    axes = _tables(source, target)
    array = np.ascontiguousarray(values, dtype=np.float32)
    channels = array if array.ndim == 4 else array[None]
    out = np.empty((channels.shape[0], *target.shape), dtype=np.float32)
    for start in range(0, target.shape[0], slab):
        part = slice(start, min(start + slab, target.shape[0]))
        _slab(channels, axes, part, out=out[:, part])
    return out if array.ndim == 4 else out[0]
