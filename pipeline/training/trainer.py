"""Patch-based training of one network, and of an ensemble of them, with resume and selection.

One member: AdamW on Dice + CE (``deconvseg.pipeline.training.losses``), linear warm-up then poly decay, batches from
``PatchSampler`` (foreground oversampling, augmentation) drawn by a ``DataLoader``
(``deconvseg.pipeline.training.loader``: in worker processes when ``loader.num_workers > 0``).
The network, batches and loss live on ``device`` (``deconvseg.pipeline.devices``: ``auto``, ``cpu``,
``cuda[:N]``, ``mps``) under ``precision`` (float32, or bf16/fp16 autocast, fp16 with a gradient
scaler), optionally in ``channels_last_3d`` and through ``torch.compile``. Checkpoints and the
resume state are written from CPU, contiguous copies, so they load on any device and precision.
Every ``val_every`` steps the network segments the validation cases (Gaussian sliding window on
the working grid) and the best mean foreground Dice so far is written as a checkpoint
(``deconvseg.models.registry.save_checkpoint``). Every ``checkpoint_every`` steps the full training state
(weights, optimizer, RNG states, step, elapsed seconds) goes to ``<member>/.resume`` so that an
interrupted run continues from the saved step; it is removed when the member finishes.

The library never prints and never changes process-wide state (torch threads are the caller's):
progress goes to an optional ``callback(TrainEvent)``.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import field_validator

from deconvseg.models.registry import build_model
from deconvseg.pipeline.checkpoints import ENSEMBLE, META, save_checkpoint
from deconvseg.pipeline.config import Settings
from deconvseg.pipeline.devices import AmpPolicy, Precision, amp_policy, place, resolve_device
from deconvseg.pipeline.domain_fit import write_domain
from deconvseg.pipeline.ensemble import load_ensemble
from deconvseg.pipeline.errors import ConfigError
from deconvseg.pipeline.evaluation import fit_postprocess
from deconvseg.pipeline.files import write_json_atomic
from deconvseg.pipeline.fusion import dice_weights
from deconvseg.pipeline.inference import prepare_predictor, sliding_window
from deconvseg.pipeline.labels import LabelTable
from deconvseg.pipeline.metrics import dice
from deconvseg.pipeline.patches import PatchSampler
from deconvseg.pipeline.segment import InferenceConfig
from deconvseg.pipeline.training.augment import AugmentConfig, RandomAugment
from deconvseg.pipeline.training.checkpointing import has_train_state, load_train_state, save_train_state
from deconvseg.pipeline.training.data import DataConfig, Prepared, TrainingData
from deconvseg.pipeline.training.loader import LoaderConfig, PatchBatches, batch_loader
from deconvseg.pipeline.training.losses import dice_ce_loss, lr_factor

log = logging.getLogger(__name__)
RESUME = ".resume"


class MemberConfig(Settings):
    """One ensemble member; unset fields take the run's values."""

    name: str
    arch: str = "deconvnet3d"
    arch_kwargs: dict[str, Any] = {}
    seed: int = 0
    steps: int | None = None
    time_budget_s: float | None = None
    lr: float | None = None
    batch_size: int | None = None
    patch_size: tuple[int, int, int] | None = None
    spacing: tuple[float, float, float] | None = None  # working spacing (x, y, z) mm; unset: data.spacing
    context_factor: tuple[int, int, int] | None = None  # two-scale networks only


class TrainConfig(Settings):
    """A training run: data, optimisation, validation, and the members to train."""

    name: str = "model"
    out: Path = Path("out/model")
    data: DataConfig = DataConfig()
    patch_size: tuple[int, int, int] = (16, 64, 64)  # (z, y, x) on the working grid
    batch_size: int = 2
    steps: int = 500
    time_budget_s: float | None = None  # stop (and finish the schedule) after this many seconds
    # "wall": seconds on the clock. "cpu": this process's CPU seconds (an idle core gives one per
    # second), so other work on a shared machine stretches the wall time but not the training.
    budget_clock: Literal["wall", "cpu"] = "wall"
    lr: float = 2e-3
    weight_decay: float = 1e-5
    warmup_steps: int = 20
    fg_fraction: float = 0.4
    augment: AugmentConfig = AugmentConfig()
    val_every: int = 100
    val_at: tuple[float, ...] = ()  # also validate when the run's progress first reaches these fractions
    val_overlap: float = 0.25
    checkpoint_every: int = 50
    threads: int = 2  # torch threads, set by the CLI and flows (the library never sets them)
    device: str = "auto"  # auto | cpu | cuda[:N] | mps (deconvseg.pipeline.devices.resolve_device)
    precision: Precision = "fp32"  # fp32 | mixed (bf16 where supported, else fp16) | bf16 | fp16
    channels_last: bool = False  # channels_last_3d weights and batches
    compile: bool = False  # torch.compile the training forward (first steps compile)
    loader: LoaderConfig = LoaderConfig()
    fusion: Literal["mean", "weighted_mean"] = "mean"
    # member name -> weight for weighted_mean; empty: each member's validation Dice per class
    # (deconvseg.pipeline.fusion.dice_weights), stored in ensemble.json as one row per member
    fusion_weights: dict[str, float] = {}
    # Refinement steps tried on the validation cases once every member is trained (kept per class
    # only where no class's Dice drops; deconvseg.pipeline.postprocess.choose_steps); [] skips the search.
    postprocess_candidates: list[dict[str, Any]] = []
    # the shape guard (deconvseg.pipeline.autoencoding.guard) that scores this model's labels for the review
    # bundle's QA,
    # a folder relative to ``out``; stored in ensemble.json as "shape_guard"
    shape_guard: str | None = None
    # InferenceConfig fields the model's figures were measured with (e.g. batch_size), stored in
    # ensemble.json as "inference" and used wherever a caller leaves them unset
    inference: dict[str, Any] = {}
    members: list[MemberConfig] = [MemberConfig(name="deconvnet3d")]

    @field_validator("inference")
    @classmethod
    def _known_inference_fields(cls, value: dict[str, Any]) -> dict[str, Any]:
        """Checked when the config is read, not when the ensemble is gathered an hour later."""
        return InferenceConfig(**value).model_dump(include=set(value))


@dataclass(frozen=True)
class TrainEvent:
    """Progress of one member: sent after every step and after every validation."""

    member: str
    step: int
    total: int
    loss: float
    val_dice: float | None = None  # latest mean validation Dice
    best_dice: float | None = None
    validated: bool = False


Callback = Callable[[TrainEvent], None]


def member_settings(config: TrainConfig, member: MemberConfig) -> dict[str, Any]:
    """The effective steps, lr, batch size and patch size of ``member``."""
    return {
        "steps": member.steps or config.steps,
        "time_budget_s": member.time_budget_s or config.time_budget_s,
        "lr": member.lr or config.lr,
        "batch_size": member.batch_size or config.batch_size,
        "patch_size": tuple(member.patch_size or config.patch_size),
    }


def is_trained(folder: Path) -> bool:
    """True when ``folder`` holds a finished member: ``model.json`` with the total training time
    (written only when training ends) and no resume state."""
    if not (folder / META).is_file() or has_train_state(folder / RESUME):
        return False
    return "seconds" in json.loads((folder / META).read_text()).get("training", {})


def validate(
    model: torch.nn.Module,
    cases: list[Prepared],
    n_classes: int,
    patch_size: tuple[int, int, int],
    context_factor: tuple[int, int, int] | None,
    config: TrainConfig,
    device: torch.device | str = "cpu",
) -> list[list[float]]:
    """Dice of every foreground class per case on the working grid (``deconvseg.pipeline.metrics.dice``),
    with the network on ``device`` under the training precision."""
    model.eval()
    mixed = config.precision != "fp32"
    predictor = prepare_predictor(model, bf16=mixed, channels_last=config.channels_last, device=device)
    dices: list[list[float]] = []
    for case in cases:
        logits = sliding_window(
            case.image, predictor, patch_size, overlap=config.val_overlap, context_factor=context_factor
        )
        pred = logits.argmax(0).numpy()
        dices.append([dice(pred == c, case.label == c) for c in range(1, n_classes)])
    model.train()
    return dices


def _class_means(per_case: list[list[float]], names: list[str]) -> dict[str, float]:
    arr = np.asarray(per_case, dtype=float)
    return {name: float(np.mean(arr[:, i])) for i, name in enumerate(names)}


def train_member(
    config: TrainConfig, member: MemberConfig, data: TrainingData, folder: Path, callback: Callback | None = None
) -> dict[str, Any]:
    """Train one member into ``folder`` (resuming from ``folder/.resume`` when present).

    Returns:
        The ``model.json`` metadata written with the best checkpoint.

    Raises:
        InputError: when ``config.device`` names a device this machine does not have.
    """
    device = resolve_device(config.device, "device")
    amp = amp_policy(device, config.precision)
    data = data.at_spacing(member.spacing)
    settings = member_settings(config, member)
    steps, patch = settings["steps"], settings["patch_size"]
    names = data.labels.names
    n_classes = len(names) + 1
    kwargs = {"in_channels": 1, "out_channels": n_classes, **member.arch_kwargs}
    if member.context_factor is not None:
        kwargs.setdefault("context_factor", list(member.context_factor))
    with torch.random.fork_rng(devices=[]):  # seeded weights without touching the caller's RNG
        torch.manual_seed(member.seed)
        model = build_model(member.arch, **kwargs)
    fmt = torch.channels_last_3d if config.channels_last else torch.contiguous_format
    place(model, device, config.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings["lr"], weight_decay=config.weight_decay)
    scaler = amp.scaler()
    sampler = PatchSampler(
        [c.image for c in data.train],
        [c.label for c in data.train],
        patch,
        config.fg_fraction,
        RandomAugment(config.augment),
        member.context_factor,
    )
    state: dict[str, Any] = {"step": 0, "elapsed_s": 0.0, "best": -1.0, "history": [], "val_at_done": []}
    resume_dir = folder / RESUME
    if has_train_state(resume_dir):
        state = load_train_state(resume_dir, model, optimizer)
        state.pop("rng", None)  # written before batches were seeded per step
        if "scaler" in state and amp.scaled:
            scaler.load_state_dict(state["scaler"])
        log.info("%s: resuming at step %d", member.name, state["step"])
    params = sum(p.numel() for p in model.parameters())
    meta_base = {
        "arch": member.arch,
        "arch_kwargs": model.arch_kwargs,
        "in_channels": 1,
        "out_channels": n_classes,
        "labels": data.labels.to_json(),
        "spacing": list(data.spacing),
        "patch_size": list(patch),
        "normalization": data.normalization,
    }
    if member.context_factor is not None:
        meta_base["context_factor"] = list(member.context_factor)

    model.train()
    net = torch.compile(model) if config.compile else model
    batches = PatchBatches(sampler, member.seed, settings["batch_size"], state["step"], steps)
    wall_started = time.perf_counter()
    clock = time.process_time if config.budget_clock == "cpu" else time.perf_counter
    started = clock() - state["elapsed_s"]
    budget = settings["time_budget_s"]
    warmup = min(config.warmup_steps, steps // 10)
    loss_value = float("nan")
    for step, batch in enumerate(batch_loader(batches, config.loader, device), start=state["step"]):
        progress = step / steps
        if budget:
            progress = max(progress, (clock() - started) / budget)
        for group in optimizer.param_groups:
            group["lr"] = settings["lr"] * lr_factor(step, progress, warmup)
        loss = _loss(net, batch, device, fmt, amp)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        loss_value = float(loss.detach())
        done = step + 1
        if callback:
            callback(
                TrainEvent(
                    member.name, done, steps, loss_value, best_dice=state["best"] if state["best"] >= 0 else None
                )
            )
        elapsed = clock() - started
        out_of_time = bool(budget) and elapsed >= budget
        now = max(done / steps, elapsed / budget if budget else 0.0)
        crossed = [f for f in config.val_at if f not in state["val_at_done"] and now >= f]
        state["val_at_done"] = state["val_at_done"] + crossed
        if done % config.val_every == 0 or done == steps or out_of_time or crossed:
            scores = validate(model, data.val, n_classes, patch, member.context_factor, config, device)
            per_class = _class_means(scores, names)
            mean = float(np.mean(list(per_class.values())))
            state["history"].append({"step": done, "loss": loss_value, "val_dice": per_class, "mean_dice": mean})
            if mean > state["best"]:
                state["best"] = mean
                seconds = clock() - started
                meta = {
                    **meta_base,
                    "metrics": {"val_dice": per_class, "mean_dice": mean, "val_cases": len(data.val)},
                    "training": {
                        **data.description,
                        "member": member.name,
                        "seed": member.seed,
                        "step": done,
                        "steps": steps,
                        "batch_size": settings["batch_size"],
                        "lr": settings["lr"],
                        "bf16": amp.dtype == torch.bfloat16,
                        "precision": amp.name,
                        "device": str(device),
                        "threads": config.threads,
                        "params": params,
                        "time_budget_s": budget,
                        "budget_clock": config.budget_clock,
                        "patch_size": list(patch),
                        "seconds_at_checkpoint": round(seconds, 1),
                    },
                }
                _write_checkpoint(folder, model, meta)
            if callback:
                callback(TrainEvent(member.name, done, steps, loss_value, mean, state["best"], validated=True))
        state["steps_done"] = done
        if out_of_time:
            log.info("%s: time budget of %.0f s reached at step %d of %d", member.name, budget, done, steps)
            break
        if done % config.checkpoint_every == 0 and done < steps:
            state.update(step=done, elapsed_s=clock() - started)
            extra = {"scaler": scaler.state_dict()} if amp.scaled else {}
            save_train_state(resume_dir, model, optimizer, {**state, **extra})
    return _finish(folder, resume_dir, clock() - started, state, wall_started)


def _loss(
    net: Callable[..., torch.Tensor],
    batch: dict[str, torch.Tensor],
    device: torch.device,
    fmt: torch.memory_format,
    amp: AmpPolicy,
) -> torch.Tensor:
    """Dice + CE of ``net`` on one loader batch, moved to ``device`` (float32 loss, autocast forward)."""
    inputs = [
        batch[key].to(device, non_blocking=True).contiguous(memory_format=fmt)
        for key in ("image", "context")
        if key in batch
    ]
    with amp.autocast():
        logits = net(*inputs)
    return dice_ce_loss(logits, batch["label"].to(device, non_blocking=True))


def _write_checkpoint(folder: Path, model: torch.nn.Module, meta: dict[str, Any]) -> None:
    """Replace the checkpoint files in ``folder`` (weights first, then ``model.json``) with a CPU,
    contiguous copy of ``model``: the files do not depend on the training device or memory format."""
    folder.mkdir(parents=True, exist_ok=True)
    portable = build_model(meta["arch"], **meta["arch_kwargs"])
    portable.load_state_dict(model.state_dict())
    save_checkpoint(folder, portable, meta)


def _finish(
    folder: Path, resume_dir: Path, seconds: float, state: dict[str, Any], wall_started: float
) -> dict[str, Any]:
    """Record the training time (on the budget's clock, and this session's wall time) and history in
    ``model.json`` and drop the resume state."""
    meta = json.loads((folder / META).read_text())
    meta["training"]["seconds"] = round(seconds, 1)
    meta["training"]["wall_seconds_this_run"] = round(time.perf_counter() - wall_started, 1)
    meta["training"]["steps_done"] = state.get("steps_done", state["step"])
    meta["training"]["history"] = state["history"]
    write_json_atomic(folder / META, meta)
    shutil.rmtree(resume_dir, ignore_errors=True)
    return meta


def _fit_plan(
    config: TrainConfig, data: TrainingData, ensemble: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The refinement plan chosen on the validation cases with the fused members, and the fused,
    refined validation scores on the input grid (Dice and HD95 per class)."""
    model = load_ensemble(config.out).with_settings(**{**ensemble, "postprocess": None})
    inference = InferenceConfig(threads=config.threads, device=config.device)
    cases = [case.original for case in data.val]
    plan, scores = fit_postprocess(cases, model, config.postprocess_candidates, inference)
    keys = ("mean_dice", "dice", "hd95", "surface_dice", "cases", "infer_s_per_volume")
    return plan, {key: scores[key] for key in keys}


def _fusion_weights(config: TrainConfig, metas: list[dict[str, Any]], order: list[str]) -> list:
    """The configured weight per member, or (``weighted_mean`` without ``fusion_weights``) each
    member's validation Dice per class, background first (``deconvseg.pipeline.fusion.dice_weights``)."""
    if config.fusion == "weighted_mean" and not config.fusion_weights:
        names = LabelTable.from_json(metas[0]["labels"]).names
        return np.round(dice_weights([meta.get("metrics") or {} for meta in metas], names), 4).tolist()
    return [float(config.fusion_weights.get(name, 1.0)) for name in order]


def ensure_member(
    config: TrainConfig, member: MemberConfig, data: TrainingData, callback: Callback | None = None
) -> dict[str, Any]:
    """The ``model.json`` of ``config.out/<member>``: read when finished, else trained (or resumed)."""
    folder = Path(config.out) / member.name
    if is_trained(folder):
        return json.loads((folder / META).read_text())
    return train_member(config, member, data, folder, callback)


def train_ensemble(
    config: TrainConfig, data: TrainingData, callback: Callback | None = None, only: list[str] | None = None
) -> dict[str, Any]:
    """Train every member of ``config`` into ``config.out/<member>`` and write ``ensemble.json``.

    Members already finished are kept (an interrupted ensemble run continues where it stopped).
    With ``only``, just those members are trained (e.g. one per process); ``ensemble.json`` is
    written once every member of the config is finished.

    Returns:
        The ``ensemble.json`` content (fusion rule, members, their metrics and seconds), or
        ``{"members_pending": [...]}`` while some members are still untrained.

    Raises:
        ConfigError: when ``only`` names a member the config does not have.
    """
    names = [m.name for m in config.members]
    unknown = sorted((set(only or []) | set(config.fusion_weights)) - set(names))
    if unknown:
        raise ConfigError(f"members {unknown} (--member or fusion_weights) are not in the config; choose from {names}")
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    for member in config.members:
        if only is None or member.name in only:
            ensure_member(config, member, data, callback)
    pending = [name for name in names if not is_trained(out / name)]
    if pending:
        return {"members_pending": pending}
    previous = json.loads((out / ENSEMBLE).read_text()) if (out / ENSEMBLE).is_file() else {}
    metas = {member.name: json.loads((out / member.name / META).read_text()) for member in config.members}
    members = {
        name: {"arch": meta["arch"], "metrics": meta["metrics"], "seconds": meta["training"]["seconds"]}
        for name, meta in metas.items()
    }
    # load_ensemble returns members sorted by folder name: the weights follow that order.
    order = sorted(members)
    ensemble = {
        "name": config.name,
        "fusion": config.fusion,
        "weights": _fusion_weights(config, [metas[name] for name in order], order),
        "weights_order": order,
        "members": members,
        "train_seconds": round(sum(m["seconds"] for m in members.values()), 1),
    }
    if config.shape_guard:
        ensemble["shape_guard"] = config.shape_guard
    if config.inference:
        ensemble["inference"] = config.inference
    if config.postprocess_candidates:
        same = (
            "postprocess" in previous
            and all(previous.get(key) == ensemble[key] for key in ("fusion", "weights", "weights_order"))
            and previous.get("members", {}).keys() == members.keys()
        )
        if same:
            ensemble.update(postprocess=previous["postprocess"], metrics=previous.get("metrics"))
        else:
            write_json_atomic(out / ENSEMBLE, ensemble)  # the search loads the members as they are now
            ensemble["postprocess"], ensemble["metrics"] = _fit_plan(config, data, ensemble)
    write_json_atomic(out / ENSEMBLE, ensemble)
    return write_domain(
        out,
        [c.original for c in data.train],
        [c.original for c in data.val],
        dataset=data.description["dataset"],
        config=InferenceConfig(threads=config.threads, device=config.device),
    )
