"""Resource guards: refuse a case that would not fit in memory, stop a case that runs too long.

**Memory.** ``estimate_peak_memory`` predicts, before any inference, the peak of the memory that
``deconvseg.pipeline.segment.segment_case`` allocates for a case, from the input's size and the members'
working spacing, classes and patch size. With ``N_in`` input voxels, ``N_w`` voxels of the
working grid (``round(n * s / s')`` per axis), ``S`` distinct working grids, ``C`` output
channels and ``M`` members (float32 = 4 bytes)::

    peak = input bytes + 8 N_w S + sum_m P_m + 128 MiB       resident: image, working image(s),
                                                             parameters, torch/oneDNN buffers
         + max( 8 C N_w + (M + 8) N_w + max_m A_m F_m batch, inference: the running fused sum and one
                                                             member's map (``fusion.RunningFusion``),
                                                             member labels, argmax, one window's activations
                10 N_w + 13 N_in )                          restore: confidence, uncertainty and labels on
                                                             the working grid, restored labels,
                                                             uncertainty and export copies

The stages run one after another, so only the larger of the two phases counts (a sum of every term
overestimated a real-size CT case 1.4x). Members are fused one at a time: no term grows with M times C.
``F_m`` is the member's window in patch volumes (1, or more for ``InferenceConfig.window="fit"``).
``A_m`` is measured once per network and patch size: one forward pass of a zero window on a
"meta"-device copy (shapes only, no compute; a real window where an operation has no meta kernel)
with hooks that add up the bytes of every module's output (an upper bound, since inference frees
most intermediate tensors as it goes). ``check_memory`` raises ``ResourceError`` with the figure
and the budget instead of letting the operating system kill the process half-way.

**Time.** ``time_limit`` raises ``CaseTimeout`` (a ``ResourceError``, so a batch records it and
does not retry it) in the thread that runs a case once ``seconds`` have passed. The exception is
delivered between Python bytecodes: a single long C call (a convolution, a resample) finishes
first, so the latency is that of the longest such call. Use it around reading and inference,
not around writing outputs (which are atomic and short).
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import logging
import math
import threading
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import psutil
import torch
from torch import nn

from deconvseg.pipeline.ensemble import Ensemble, MemberSpec
from deconvseg.pipeline.errors import ResourceError
from deconvseg.pipeline.inference import member_window
from deconvseg.pipeline.volume import Volume

log = logging.getLogger(__name__)

MIB = 1 << 20
RUNTIME_OVERHEAD = 128 * MIB  # measured ~90-110 MiB above the loaded baseline on small cases (benchmarks/guards.py)
DEFAULT_BUDGET_FRACTION = 0.8  # of physical memory, when no budget is configured
_ACTIVATIONS: weakref.WeakKeyDictionary[nn.Module, dict[tuple, int]] = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class MemoryEstimate:
    """Predicted peak memory of one case, in bytes, with the terms of the formula."""

    parts: dict[str, int]

    @property
    def total(self) -> int:
        return int(sum(self.parts.values()))

    @property
    def mib(self) -> float:
        return self.total / MIB


def working_shape(image: Volume, spacing_xyz: Sequence[float]) -> tuple[int, ...]:
    """``(z, y, x)`` of ``image`` resampled to ``spacing_xyz`` (same rule as ``deconvseg.pipeline.resample``)."""
    return tuple(reversed([max(1, int(round(n * s / t))) for n, s, t in zip(image.size, image.spacing, spacing_xyz)]))


def working_size(image: Volume, spacing_xyz: Sequence[float]) -> int:
    """Voxels of ``image`` resampled to ``spacing_xyz``."""
    return math.prod(working_shape(image, spacing_xyz))


def activation_bytes(model: nn.Module, spec: MemberSpec) -> int:
    """Bytes of all module outputs in one forward pass of one window (cached per network and patch).

    Args:
        model: the network (in eval mode); called with zeros of shape ``(1, in_channels, *patch)``
            and, for two-scale networks (``spec.context_factor``), a context input of the same shape.
        spec: its spec (``patch_size``, ``in_channels``, ``context_factor``).
    """
    cache = _ACTIVATIONS.setdefault(model, {})
    key = (spec.patch_size, spec.in_channels, spec.context_factor is not None)
    if key not in cache:
        try:  # shapes only: a copy on the "meta" device runs the forward pass without computing anything
            cache[key] = _output_bytes(copy.deepcopy(model).to("meta"), key, "meta")
        except (RuntimeError, NotImplementedError) as err:  # an operation with no meta kernel
            log.debug("meta-device probe failed (%s); measuring one real window instead", err)
            cache[key] = _output_bytes(model, key, next(model.parameters(), torch.zeros(0)).device)
    return cache[key]


def _output_bytes(model: nn.Module, key: tuple, device: str | torch.device) -> int:
    """Sum of the bytes of every leaf module's output for one zero window (``key`` = patch, channels, two-scale)."""
    total = 0

    def add(module: nn.Module, inputs: Any, output: Any) -> None:
        nonlocal total
        for tensor in output if isinstance(output, (tuple, list)) else (output,):
            if isinstance(tensor, torch.Tensor):
                total += tensor.numel() * tensor.element_size()

    handles = [m.register_forward_hook(add) for m in model.modules() if not list(m.children())]
    try:
        window = torch.zeros((1, key[1], *key[0]), device=device)
        with torch.inference_mode():
            model(*([window, window] if key[2] else [window]))
    finally:
        for handle in handles:
            handle.remove()
    return total


def estimate_peak_memory(
    image: Volume, ensemble: Ensemble, *, batch_size: int = 1, window: str = "patch", overlap: float = 0.5
) -> MemoryEstimate:
    """The predicted peak memory of segmenting ``image`` with ``members`` (formula in the module docstring).

    Args:
        image: the input volume (only its size, spacing and dtype are used).
        ensemble: the model (``deconvseg.pipeline.ensemble.load_ensemble``).
        batch_size: windows per network call (mirrored passes run one after another and do not add up).
        window: ``"fit"``: activations of the window ``fitted_window`` picks on the whole working grid
            (``InferenceConfig.window``; the crop to the body only makes it smaller or equal in cost).
        overlap: the sliding window's overlap (it decides the fitted window).
    """
    n_in = int(np.prod(image.shape))
    grids = {spec.spacing for spec in ensemble.specs}
    n_w = max(working_size(image, spacing) for spacing in grids)
    channels = max(spec.out_channels for spec in ensemble.specs)
    m = len(ensemble.members)
    activations = max(
        activation_bytes(member.network, member.spec) * _window_factor(image, member.spec, window, overlap)
        for member in ensemble.members
    )
    inference = {"probability_maps": 8 * channels * n_w + (m + 8) * n_w, "activations": int(activations * batch_size)}
    restore = {"restore_and_export": 10 * n_w + 13 * n_in}
    return MemoryEstimate(
        {
            "input": int(image.array.nbytes),
            "working_images": 8 * n_w * len(grids),
            "parameters": sum(
                sum(p.numel() * p.element_size() for p in member.network.parameters()) for member in ensemble.members
            ),
            "runtime": RUNTIME_OVERHEAD,
            **(inference if sum(inference.values()) >= sum(restore.values()) else restore),
        }
    )


def _window_factor(image: Volume, spec: MemberSpec, window: str, overlap: float) -> float:
    """The member's window in patch volumes (activations grow with it)."""
    shape = working_shape(image, spec.spacing)
    chosen = member_window(shape, spec.patch_size, overlap, window, spec.context_factor is not None)
    return math.prod(chosen) / math.prod(spec.patch_size)


def max_input_voxels(budget_mib: float | None = None) -> int:
    """The most input voxels a case can have within the budget, before the model is even considered:
    each input voxel costs at least 4 bytes (float32) plus the 13 of restoring and exporting the labels
    (``estimate_peak_memory``). Readers refuse larger headers before allocating or decompressing
    anything (``deconvseg.pipeline.io.volumes.read_volume``'s ``max_voxels``)."""
    budget = budget_mib * MIB if budget_mib else default_budget_bytes()
    return max(1, int(budget // (4 + 13)))


def default_budget_bytes(fraction: float = DEFAULT_BUDGET_FRACTION) -> int:
    """``fraction`` of this machine's physical memory."""
    return int(psutil.virtual_memory().total * fraction)


def check_memory(image: Volume, ensemble: Ensemble, budget_mib: float | None = None, **kwargs: Any) -> MemoryEstimate:
    """Refuse a case whose predicted peak memory exceeds the budget.

    Args:
        image: the input volume.
        ensemble: the model.
        budget_mib: the budget in MiB; ``None``: ``DEFAULT_BUDGET_FRACTION`` of physical memory.
        **kwargs: ``batch_size``, ``window`` and ``overlap`` of ``estimate_peak_memory``.

    Returns:
        The estimate (logged at debug level).

    Raises:
        ResourceError: naming the input, the predicted peak and the budget.
    """
    estimate = estimate_peak_memory(image, ensemble, **kwargs)
    budget = default_budget_bytes() if budget_mib is None else int(budget_mib * MIB)
    source = image.metadata.get("source", "volume")
    if estimate.total > budget:
        worst = max(estimate.parts, key=lambda part: estimate.parts[part])
        raise ResourceError(
            f"{source}: predicted peak memory {estimate.mib:,.0f} MiB exceeds the budget of {budget / MIB:,.0f} MiB "
            f"(size {list(image.size)}, largest term {worst}: {estimate.parts[worst] / MIB:,.0f} MiB); "
            "raise memory_budget_mib, use fewer members or a coarser working spacing"
        )
    log.debug("%s: predicted peak memory %.0f MiB of %.0f MiB", source, estimate.mib, budget / MIB)
    return estimate


class CaseTimeout(ResourceError):
    """A case ran longer than its time limit."""


class _Expired(BaseException):
    """What the timer injects: a ``BaseException``, so no ``except Exception``/``RuntimeError``/``OSError``
    on the way (e.g. a reader turning errors into "corrupt file") can swallow or relabel it."""


@contextlib.contextmanager
def time_limit(seconds: float | None, what: str = "case") -> Iterator[None]:
    """Raise ``CaseTimeout`` in the calling thread when the block runs longer than ``seconds``.

    Works in any thread (the exception is scheduled with ``PyThreadState_SetAsyncExc``), so a
    Prefect task in a thread pool can use it. ``None`` means no limit.

    Args:
        seconds: the limit.
        what: names the work in the message, e.g. the case id and input path.

    Raises:
        CaseTimeout: ``"<what>: exceeded the time limit of <s> s; ..."``.
    """
    if seconds is None:
        yield
        return
    if seconds <= 0:
        raise ValueError(f"time limit must be positive, got {seconds}")
    target = ctypes.c_ulong(threading.get_ident())
    lock = threading.Lock()
    state = {"active": True, "fired": False}

    def fire() -> None:
        with lock:
            if state["active"]:
                state["fired"] = True
                ctypes.pythonapi.PyThreadState_SetAsyncExc(target, ctypes.py_object(_Expired))

    timer = threading.Timer(seconds, fire)
    timer.daemon = True
    timer.start()
    try:
        yield
    except _Expired:
        raise CaseTimeout(
            f"{what}: exceeded the time limit of {seconds:g} s; raise the time limit or check the input's size"
        ) from None
    finally:
        timer.cancel()
        with lock:
            state["active"] = False
            if state["fired"]:  # fired just as the block ended: withdraw the pending exception
                ctypes.pythonapi.PyThreadState_SetAsyncExc(target, None)
