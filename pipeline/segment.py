"""Segment one volume with an ensemble: the ``segment_case`` API the CLI and the flows call.

Per member: resample the input to the member's working spacing, normalise with the member's
spec, run the Gaussian sliding window (``deconvseg.pipeline.inference``) and take the softmax. The members'
probabilities meet on the finest working grid of the members, are fused (``deconvseg.pipeline.fusion``), give the
uncertainty, are refined by the stored plan (``deconvseg.pipeline.postprocess``) and come back to the input
grid slab by slab: labels by label-consistent trilinear scores, uncertainty trilinearly. No map
with C channels is ever held at the input's resolution. An ensemble whose ``ensemble.json`` names a
``shape_guard`` (``deconvseg.pipeline.autoencoding.guard``) has its final labels scored for plausibility (QA only:
the labels are not changed).

Normalisation runs after resampling (on ~30x fewer voxels for CT): CT and z-score schemes are
affine per voxel, so they commute with linear resampling except at the clip limits.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch

from deconvseg.pipeline.autoencoding.assessment import ShapeAssessment
from deconvseg.pipeline.config import Settings
from deconvseg.pipeline.ensemble import Ensemble
from deconvseg.pipeline.errors import ConfigError
from deconvseg.pipeline.fusion import (
    Rule,
    RunningFusion,
    channel_argmax,
    dice_weights,
    structure_uncertainty,
    voxel_uncertainty,
)
from deconvseg.pipeline.guards import check_memory
from deconvseg.pipeline.inference import member_window, prepare_predictor, sliding_window
from deconvseg.pipeline.labels import LabelTable
from deconvseg.pipeline.normalize import foreground_mask, normalize
from deconvseg.pipeline.postprocess import Prior, apply_plan
from deconvseg.pipeline.resample import resample_to_spacing, restore_labels, restore_map
from deconvseg.pipeline.volume import Volume

if TYPE_CHECKING:
    from deconvseg.pipeline.autoencoding.guard import ShapeGuard

log = logging.getLogger(__name__)


class InferenceConfig(Settings):
    """Inference settings (defaults here; YAML overrides).

    Attributes:
        threads: torch threads.
        device: ``auto | cpu | cuda[:N] | mps`` for the networks (``deconvseg.pipeline.devices``).
        overlap: sliding-window overlap fraction per axis.
        window: ``"patch"``: windows of each member's training patch; ``"fit"``: per case, fewer and larger
            windows (up to ``MAX_WINDOW_FACTOR`` patch volumes) where they evaluate fewer voxels
            (``deconvseg.pipeline.inference.fitted_window``; single-input networks). Check a model's accuracy with
            it before shipping it in the model's ``inference`` settings.
        batch_size: windows per network call (1 was fastest on 2 CPU cores).
        bf16: reduced-precision autocast: bfloat16 where the device supports it (faster on CPUs with
            AVX512-BF16/AMX), float16 on older GPUs; left unset, on when every
            member trained under it (``effective_config``).
        channels_last: ``channels_last_3d`` weights and inputs.
        compile: ``torch.compile`` with weight freezing (pays ~10 s per member per process).
        mirror_axes: spatial axes (0=z, 1=y, 2=x) for mirroring test-time augmentation; none by default.
        fusion: fusion rule; ``None`` takes ``ensemble.json``'s rule, else ``mean``.
        refine: apply the stored post-processing plan.
        crop_foreground: run the networks only on the bounding box of the image's foreground
            (``deconvseg.pipeline.normalize.foreground_mask``, e.g. the body in CT) plus ``crop_margin_mm``;
            outside it every voxel is background (nnU-Net crops to the non-zero region the same way).
        crop_margin_mm: margin kept around the foreground box (the box is grown to at least one
            window, so the networks see real image, not padding, around the body).
        resample_order: interpolation order of the image onto the working grid (1 = linear: the
            ~30x downsampling of CT makes cubic cost seconds for no visible gain).
        slab: input-grid z-slices restored at once (memory ~ classes x slab x rows x columns floats).
        memory_budget_mib: refuse a case whose predicted peak memory (``deconvseg.pipeline.guards``) exceeds
            this; ``None``: 80 % of physical memory.
    """

    threads: int = 2
    device: str = "auto"
    overlap: float = 0.5
    window: Literal["patch", "fit"] = "patch"
    batch_size: int = 1
    bf16: bool = False
    channels_last: bool = True
    compile: bool = False
    mirror_axes: tuple[int, ...] = ()
    fusion: Rule | None = None
    refine: bool = True
    crop_foreground: bool = True
    crop_margin_mm: float = 6.0
    resample_order: int = 1
    slab: int = 16
    memory_budget_mib: float | None = None


@dataclass(frozen=True)
class SegmentationResult:
    """What ``segment_case`` returns; every volume lies on the input's grid.

    Attributes:
        labels: uint8 label map (``kind="label"``), values of ``table``.
        uncertainty: float32 voxel uncertainty in ``[0, 1]``.
        structure_uncertainty: ``{label value: score in [0, 1]}``.
        timings: seconds per stage.
        table: the members' label table.
        summary: per label value, ``{"mean_probability": fused probability inside the structure}``.
        shape: the shape guard's plausibility of ``labels``, when the ensemble names a guard.
    """

    labels: Volume
    uncertainty: Volume
    structure_uncertainty: dict[int, float]
    timings: dict[str, float]
    table: LabelTable
    summary: dict[int, dict[str, float]] = field(default_factory=dict)
    shape: ShapeAssessment | None = None


Progress = Callable[[str, int, int], None]
"""``progress(stage, done, total)``: a stage (``"resample"``, ``"fusion"``, ...) reports ``(0, 1)`` when it
starts and ``(1, 1)`` when it ends; a member (``"member <name>"``) reports its windows, ``(0, n)`` first
and then after every batch of windows."""


@contextmanager
def _timed(timings: dict[str, float], stage: str, progress: Progress | None = None) -> Iterator[None]:
    if progress:
        progress(stage, 0, 1)
    start = time.perf_counter()
    yield
    timings[stage] = timings.get(stage, 0.0) + time.perf_counter() - start
    if progress:
        progress(stage, 1, 1)


@functools.lru_cache(maxsize=4)
def _load_guard(folder: Path) -> ShapeGuard:
    from deconvseg.pipeline.autoencoding.guard import load_shape_guard  # only ensembles with a guard pay for it

    return load_shape_guard(folder)


def ensemble_shape_guard(ensemble: Ensemble) -> tuple[ShapeGuard, str] | None:
    """The ``ShapeGuard`` that the ensemble's settings name and its name, or ``None`` when none is named.
    Loaded once per process and folder.

    Raises:
        ConfigError: the table's values are outside the guard's classes.
        InputError: the folder holds no shape guard.
    """
    folder = ensemble.shape_guard_folder()
    if folder is None:
        return None
    guard = _load_guard(folder)
    if max(ensemble.table.values, default=0) >= guard.config.n_classes:
        raise ConfigError(
            f"{folder}: shape guard knows labels 1..{guard.config.n_classes - 1}, the model has "
            f"{list(ensemble.table.values)}; name a guard trained on the model's label table"
        )
    return guard, folder.name


def foreground_box(volume: Volume, margin_mm: float, min_size: Sequence[int] = (1, 1, 1)) -> tuple[slice, slice, slice]:
    """Bounding box (z, y, x slices) of the image's foreground, grown by ``margin_mm``.

    A box thinner than ``min_size`` (the window) along an axis grows around its centre to the window
    (clipped to the image), so a window sees real image there rather than padding.
    """
    mask = foreground_mask(volume.array)
    box = []
    for axis, (spacing, size) in enumerate(zip(reversed(volume.spacing), min_size)):
        n = mask.shape[axis]
        hit = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))
        margin = int(np.ceil(margin_mm / spacing))
        lo, hi = max(int(hit[0]) - margin, 0), min(int(hit[-1]) + margin + 1, n)
        grow = max(int(size) - (hi - lo), 0)
        lo = max(min(lo - grow // 2, n - int(size)), 0)
        box.append(slice(lo, min(max(hi, lo + int(size)), n)))
    return tuple(box)  # type: ignore[return-value]


def effective_config(config: InferenceConfig, ensemble: Ensemble) -> InferenceConfig:
    """``config`` with the settings the members were validated with in the fields the caller left
    unset: bf16 autocast when every member trained (and was selected) under it -- 4-5x faster on
    CPUs with AVX512-BF16 (ACDC, 2026-11-26), and the arithmetic its validation Dice was measured in --
    and the ``inference`` fields of ``ensemble.json`` (what its figures were measured with)."""
    validated = {"bf16": True} if ensemble.bf16 else {}
    return InferenceConfig(**{**validated, **ensemble.settings.inference, **config.model_dump(exclude_unset=True)})


def member_outputs(
    image: Volume,
    ensemble: Ensemble,
    config: InferenceConfig = InferenceConfig(),
    timings: dict[str, float] | None = None,
    progress: Progress | None = None,
) -> Iterator[tuple[int, np.ndarray, tuple[slice, ...], Volume]]:
    """Each member's softmax on the finest working grid of the members, one member at a time.

    Per member: resample, crop to the foreground box, normalise, sliding window; members on a
    coarser grid are resampled onto the finest one (a native-resolution member keeps its detail in
    the fusion). ``timings`` (seconds per stage) is added to in place.

    Yields:
        ``(member index, probabilities (C, *box shape), box, grid)``: outside ``box`` (slices of
        ``grid``) the member says background with probability 1.
    """
    timings = {} if timings is None else timings
    working: dict[tuple, tuple[Volume, tuple[slice, ...]]] = {}
    members = ensemble.members
    finest = min(range(len(members)), key=lambda i: math.prod(members[i].spec.spacing))
    grid: Volume | None = None
    for index in [finest, *(i for i in range(len(members)) if i != finest)]:
        member, spec = members[index], members[index].spec
        key = (spec.spacing, json.dumps(spec.normalization, sort_keys=True))
        if key not in working:
            with _timed(timings, "resample", progress):
                resampled = resample_to_spacing(
                    image, spec.spacing, order=config.resample_order, threads=config.threads
                )
            with _timed(timings, "crop"):
                full = tuple(slice(0, n) for n in resampled.shape)
                box = (
                    foreground_box(resampled, config.crop_margin_mm, spec.patch_size)
                    if config.crop_foreground
                    else full
                )
            with _timed(timings, "normalize"):
                working[key] = (normalize(resampled, spec.normalization), box)
        volume, box = working[key]
        grid = grid or volume
        with _timed(timings, "inference"):
            predictor = prepare_predictor(
                member.network,
                bf16=config.bf16,
                channels_last=config.channels_last,
                compile=config.compile,
                device=config.device,
            )
            windows = functools.partial(progress, f"member {member.name}") if progress else None
            region = volume.array[box]
            two_scale = spec.context_factor is not None
            probs = sliding_window(
                region,
                predictor,
                member_window(region.shape, spec.patch_size, config.overlap, config.window, two_scale),
                overlap=config.overlap,
                batch_size=config.batch_size,
                mirror_axes=config.mirror_axes,
                context_factor=spec.context_factor,
                on_window=windows,
            )
            with torch.inference_mode():  # softmax in place: no second (C, ...) map
                probs.sub_(probs.amax(dim=0, keepdim=True)).exp_()
                probs.div_(probs.sum(dim=0, keepdim=True))
        if volume.same_grid(grid):
            yield index, probs.numpy(), box, grid
            continue
        with _timed(timings, "resample", progress):
            whole = np.zeros((probs.shape[0], *volume.shape), dtype=np.float32)
            whole[0] = 1.0
            whole[(slice(None), *box)] = probs.numpy()
            del probs
            restored = restore_map(whole, volume, grid, config.slab, config.threads)
        yield index, restored, tuple(slice(0, n) for n in grid.shape), grid


def member_probabilities(
    image: Volume,
    ensemble: Ensemble,
    config: InferenceConfig = InferenceConfig(),
    timings: dict[str, float] | None = None,
) -> tuple[np.ndarray, Volume]:
    """Each member's softmax stacked, ``(M, C, z, y, x)`` on the finest member grid, and that grid
    (for comparing fusion rules; ``segment_case`` fuses member by member instead)."""
    stack: np.ndarray | None = None
    grid: Volume | None = None
    for index, probs, box, grid in member_outputs(image, ensemble, config, timings):
        if stack is None:
            stack = np.zeros((len(ensemble.members), probs.shape[0], *grid.shape), dtype=np.float32)
            stack[:, 0] = 1.0
        stack[index][(slice(None), *box)] = probs
    assert stack is not None and grid is not None  # an ensemble has at least one member
    return stack, grid


def segment_case(
    image: Volume,
    ensemble: Ensemble,
    config: InferenceConfig = InferenceConfig(),
    *,
    priors: Mapping[str, Prior] | None = None,
    progress: Progress | None = None,
) -> SegmentationResult:
    """Segment ``image`` with every member, fuse, estimate uncertainty, refine, restore.

    Args:
        image: the input volume (any grid; intensities as acquired).
        ensemble: the model (``deconvseg.pipeline.ensemble.load_ensemble``); its settings give the fusion
            rule/weights, the post-processing plan and the shape guard.
        config: inference settings.
        priors: shape-prior callables named by ``prior`` steps of the plan.
        progress: told of each stage and of each member's windows (``Progress``).

    Returns:
        The result; ``shape`` holds the plausibility of the labels when the ensemble names a
        ``shape_guard`` (scored on the input grid with the input's spacing).

    Raises:
        ConfigError: when the fusion rule needs missing weights or the shape guard does not fit.
        ResourceError: when the predicted peak memory exceeds ``config.memory_budget_mib``.
    """
    table = ensemble.table
    settings = ensemble.settings
    config = effective_config(config, ensemble)
    timings: dict[str, float] = {}
    with _timed(timings, "memory_check"):
        check_memory(
            image,
            ensemble,
            config.memory_budget_mib,
            batch_size=config.batch_size,
            window=config.window,
            overlap=config.overlap,
        )
    guard = ensemble_shape_guard(ensemble)  # before inference: a bad guard fails fast
    values = np.array([0, *table.values], dtype=np.uint8)
    rule = config.fusion or settings.fusion
    weights: list[float] | list[list[float]] | np.ndarray | None = settings.weights
    if rule == "weighted_mean" and weights is None:
        weights = dice_weights([spec.metrics for spec in ensemble.specs], table.names)
    matrix = None if weights is None else np.asarray(weights, dtype=np.float32)
    fusion: RunningFusion | None = None
    for index, probs, box, grid in member_outputs(image, ensemble, config, timings, progress):
        with _timed(timings, "fusion"):
            if fusion is None:  # the grid is known once the first member is out
                fusion = RunningFusion(rule, matrix, len(ensemble.members), len(values), grid.shape)
            fusion.add(index, probs, box)
            del probs
    assert fusion is not None  # an ensemble has at least one member
    with _timed(timings, "fusion", progress):
        fused = fusion.result()
        fused_channels, confidence = channel_argmax(fused)
    with _timed(timings, "uncertainty", progress):
        member_channels = fusion.labels
        uncertainty = voxel_uncertainty(fused, member_channels, fused_channels, config.slab)
        per_channel = structure_uncertainty(uncertainty, member_channels, fused_channels, len(values))
        summary = {
            int(values[c]): {"mean_probability": float(fused[c][fused_channels == c].mean())}
            for c in range(1, len(values))
            if (fused_channels == c).any()
        }
        del fused, fusion, member_channels
    with _timed(timings, "refine", progress):
        fused_labels = values[fused_channels]
        refined = (
            apply_plan(fused_labels, settings.postprocess, grid.spacing, priors) if config.refine else fused_labels
        )
        confidence = np.where(refined == fused_labels, confidence, np.float32(1.0))
    with _timed(timings, "restore", progress):
        labels = restore_labels(refined, confidence, grid, image, config.slab, threads=config.threads)
        restored_uncertainty = restore_map(uncertainty, grid, image, config.slab, config.threads)
        np.clip(restored_uncertainty, 0.0, 1.0, out=restored_uncertainty)
    shape = None
    if guard is not None:
        with _timed(timings, "shape_guard", progress):
            shape = ShapeAssessment(guard[0].assess(labels, image.spacing), guard[0].plausibility, guard[1])
    log.info(
        "segmented %s with %d member(s): %s",
        image.metadata.get("source", "volume"),
        len(ensemble.members),
        {k: round(v, 2) for k, v in timings.items()},
    )
    return SegmentationResult(
        labels=image.with_array(labels, kind="label"),
        uncertainty=image.with_array(restored_uncertainty, kind="image"),
        structure_uncertainty={int(values[c]): s for c, s in per_channel.items()},
        timings=timings,
        table=table,
        summary=summary,
        shape=shape,
    )
