"""Run one network over a volume with Gaussian-weighted sliding windows; map results between grids.

Stitching (Isensee et al., nnU-Net, Nat. Methods 2021): windows of the training patch size tile the
volume with a given overlap, every window's output is weighted by a Gaussian centred on the window
(``w(v) = exp(-|v - c|^2 / (2 sigma^2))``, ``sigma = patch / 8`` per axis), and each voxel gets

    y(v) = sum_k w_k(v) f(x_k)(v) / sum_k w_k(v),

so any predictor ``f`` that is a voxel-wise map (``lambda x: 2 * x``) comes back exactly.

Memory stays bounded: outputs are accumulated on the (coarse) working grid only; the results go back
to the input grid slab by slab (``deconvseg.pipeline.resample.restore_labels``/``restore_map``).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from typing import cast

import numpy as np
import torch
from torch import nn

from deconvseg.pipeline.devices import amp_policy, place, resolve_device
from deconvseg.pipeline.patches import context_crop

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


MAX_WINDOW_FACTOR = 2.5  # the largest fitted window, in patch volumes (activation memory grows with it)


def fitted_window(
    shape: Sequence[int], patch: Sequence[int], overlap: float, max_factor: float = MAX_WINDOW_FACTOR
) -> tuple[int, int, int]:
    """The window that covers ``shape`` with the fewest voxel evaluations, from the training ``patch`` up.

    A fully convolutional network runs on any window; fewer, larger windows share less (at overlap 0.125
    a 232x204x253 crop takes 27 windows of 96^3, 23.9 M voxels, or 12 of 128x112x96, 16.5 M). Per axis the window grows
    in steps of the patch's stride (its largest power-of-two factor, at most 16) to the size where one
    window fewer covers the axis at the same ``overlap``; the combination with the fewest evaluated
    voxels whose window holds at most ``max_factor`` x the patch's voxels wins (memory grows with it).

    Args:
        shape: ``(z, y, x)`` of the region to cover.
        patch: the training patch ``(z, y, x)``.
        overlap: the sliding window's overlap fraction.
        max_factor: the largest window, in patch volumes.
    """
    options = []
    for size, p in zip(shape, patch):
        stride = min(p & -p, 16)
        count = len(window_starts(size, p, overlap))
        axis = {(p, count)}
        for n in range(1, count):
            w = max(p, -(-math.ceil(size / (n - (n - 1) * overlap)) // stride) * stride)
            while len(window_starts(size, w, overlap)) > n:
                w += stride
            axis.add((w, n))
        options.append(sorted(axis))
    limit = max_factor * math.prod(patch)
    best = min(
        (c for c in itertools.product(*options) if math.prod(w for w, _ in c) <= limit),
        key=lambda c: (math.prod(w * n for w, n in c), math.prod(w for w, _ in c)),
    )
    return best[0][0], best[1][0], best[2][0]


def member_window(
    shape: Sequence[int], patch: Sequence[int], overlap: float, window: str, two_scale: bool = False
) -> tuple[int, ...]:
    """The window a member runs on ``shape``: its training ``patch``, or with ``window="fit"`` the
    ``fitted_window`` (single-input networks only: a two-scale network's context is tied to its patch)."""
    if window == "fit" and not two_scale:
        return fitted_window(shape, patch, overlap)
    return tuple(patch)


def prepare_predictor(
    model: nn.Module,
    *,
    bf16: bool = False,
    channels_last: bool = False,
    compile: bool = False,
    device: str | torch.device = "cpu",
) -> Predictor:
    """Wrap a network as a predictor with the speed switches (the module is moved, not copied).

    Args:
        model: a network; called as ``model(local)`` or ``model(local, context)``; set to eval mode.
        bf16: reduced-precision autocast: bfloat16 where the device supports it (CPUs, CUDA compute
            capability >= 8), float16 otherwise (2.2x on these CPUs; check accuracy per model).
        channels_last: convert weights and inputs to ``channels_last_3d``.
        compile: ``torch.compile`` with inductor weight freezing (first call compiles, ~10 s).
        device: ``auto | cpu | cuda[:N] | mps`` or a ``torch.device``
            (``deconvseg.pipeline.devices.resolve_device``).

    Returns:
        ``predict(*inputs) -> float32 logits on the CPU`` (inputs may be on any device; no
        gradients are recorded).

    Raises:
        InputError: when ``device`` names a device this machine does not have.
    """
    target = resolve_device(device)
    amp = amp_policy(target, "mixed" if bf16 else "fp32")
    fmt = torch.channels_last_3d if channels_last else torch.contiguous_format
    model = place(model.eval(), target, channels_last)
    net = torch.compile(model, options={"freezing": True}) if compile else model

    def predict(*inputs: torch.Tensor) -> torch.Tensor:
        tensors = [x.to(target, non_blocking=True).contiguous(memory_format=fmt) for x in inputs]
        with torch.inference_mode(), amp.autocast():
            return net(*tensors).float().cpu()

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
    on_window: Callable[[int, int], None] | None = None,
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
        on_window: called as ``on_window(done, total)`` windows, once before the first and after each batch.

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
    flips = [
        list(c) for k in range(len(mirror_axes) + 1) for c in itertools.combinations([a + 2 for a in mirror_axes], k)
    ]

    acc: torch.Tensor | None = None
    norm = torch.zeros(full, dtype=torch.float32)
    if on_window:
        on_window(0, len(starts))
    with torch.inference_mode():
        for first in range(0, len(starts), batch_size):
            group = starts[first : first + batch_size]
            boxes = [tuple(slice(s, s + p) for s, p in zip(start, patch)) for start in group]
            local = torch.stack([padded_t[(slice(None), *box)] for box in boxes])
            inputs = [local]
            if context_factor is not None:
                centers = [[s + p // 2 - b for s, p, b in zip(start, patch, before)] for start in group]
                inputs.append(
                    torch.from_numpy(np.stack([context_crop(source, c, patch, context_factor) for c in centers]))
                )
            total = cast(torch.Tensor, sum(_flip(predictor(*[_flip(x, f) for x in inputs]).float(), f) for f in flips))
            out = total / len(flips)
            if acc is None:
                acc = torch.zeros((out.shape[1], *full), dtype=torch.float32)
            for box, window in zip(boxes, out):
                acc[(slice(None), *box)] += window * weight
                norm[box] += weight
            if on_window:
                on_window(first + len(group), len(starts))
        assert acc is not None  # window_starts gives at least one window per axis
        acc /= norm
    crop = tuple(slice(b, b + s) for b, s in zip(before, shape))
    return acc[(slice(None), *crop)].contiguous()


def _flip(x: torch.Tensor, dims: list[int]) -> torch.Tensor:
    return x.flip(dims) if dims else x
