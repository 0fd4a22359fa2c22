"""A trained model as a typed object: ``load_ensemble`` reads a model folder once and validates it.

A model folder is either one checkpoint (``model.json`` + ``weights.safetensors``, see
``deconvseg.pipeline.checkpoints``) or an ensemble: a folder of checkpoint folders (members, sorted by
name) with an optional ``ensemble.json`` (fusion rule and weights, post-processing plan, shape guard,
validation metrics). Everything downstream reads ``MemberSpec``/``EnsembleSettings`` attributes; no
other module parses these files.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator
from torch import nn

from deconvseg.pipeline.checkpoints import ENSEMBLE, META, WEIGHTS, load_checkpoint, read_json
from deconvseg.pipeline.domain import TrainingDomain
from deconvseg.pipeline.errors import ConfigError, InputError
from deconvseg.pipeline.files import file_digest
from deconvseg.pipeline.fusion import Rule
from deconvseg.pipeline.labels import LabelTable
from deconvseg.pipeline.model_paths import model_reference

Triple = tuple[float, float, float]


class MemberSpec(BaseModel):
    """One member's ``model.json``: what it needs to run and what it was validated with.

    Attributes:
        arch, arch_kwargs: the network (``deconvseg.models.registry.ARCHITECTURES``; empty for a network
            built in memory, see ``Ensemble.from_networks``).
        in_channels, out_channels: image channels in, classes out (background included).
        labels: ``LabelTable.to_json()`` of classes ``1..out_channels-1``.
        spacing: working spacing ``(x, y, z)`` in mm.
        patch_size: sliding-window size ``(z, y, x)`` in voxels.
        normalization: the spec of ``deconvseg.pipeline.normalize.fit_normalization``.
        context_factor: ``(z, y, x)`` of two-scale networks (``forward(local, context)``), else ``None``.
        metrics: validation metrics (``val_dice`` per class name, ``mean_dice``).
        training: the training record (data, seconds, precision, ...).
        postprocess: the member's own refinement plan (used when the model is this one checkpoint).
    """

    model_config = ConfigDict(frozen=True, extra="allow")

    arch: str = ""
    arch_kwargs: dict[str, Any] = {}
    in_channels: int = 1
    out_channels: int
    labels: list[dict[str, Any]]
    spacing: Triple
    patch_size: tuple[int, int, int]
    normalization: dict[str, Any]
    context_factor: tuple[int, int, int] | None = None
    metrics: dict[str, Any] = {}
    training: dict[str, Any] = {}
    postprocess: dict[str, Any] | None = None

    @field_validator("spacing", "patch_size")
    @classmethod
    def _positive(cls, value: tuple) -> tuple:
        if any(v <= 0 for v in value):
            raise ValueError(f"must be positive, got {list(value)}")
        return value

    @model_validator(mode="after")
    def _channels_match_labels(self) -> MemberSpec:
        try:
            _ = self.table
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"labels are not a label table ({err!r})") from err
        if self.out_channels != len(self.table) + 1:
            raise ValueError(f"out_channels {self.out_channels} does not match {len(self.table)} labels + background")
        return self

    @functools.cached_property
    def table(self) -> LabelTable:
        """The member's label table."""
        return LabelTable.from_json(self.labels)

    @property
    def bf16(self) -> bool:
        """True when the member was trained (and validated) under bfloat16 autocast."""
        return bool(self.training.get("bf16"))


class EnsembleSettings(BaseModel):
    """``ensemble.json``: how the members are combined and checked.

    Attributes:
        name: the model's name.
        fusion: fusion rule (``deconvseg.pipeline.fusion.fuse``).
        weights: per member (``(M,)``) or per member and class (``(M, C)``) fusion weights, in member order.
        weights_order: member names the rows of ``weights`` belong to (checked at load).
        postprocess: the refinement plan (``deconvseg.pipeline.postprocess.apply_plan``).
        shape_guard: folder of the shape guard scoring the labels, relative to the model folder.
        metrics: the ensemble's validation metrics.
        domain: what the model was trained on and the calibrated thresholds of its checks
            (``deconvseg.pipeline.domain``); ``None`` for a model without the record (no checks run).
        inference: ``InferenceConfig`` fields the model's figures were measured with (e.g. windows
            per network call), used where the caller leaves them unset.
    """

    model_config = ConfigDict(frozen=True, extra="allow")

    name: str | None = None
    fusion: Rule = "mean"
    weights: list[float] | list[list[float]] | None = None
    weights_order: list[str] | None = None
    postprocess: dict[str, Any] | None = None
    shape_guard: str | None = None
    metrics: dict[str, Any] = {}
    domain: TrainingDomain | None = None
    inference: dict[str, Any] = {}


@dataclass(frozen=True)
class Member:
    """One network of an ensemble with its spec and checkpoint folder."""

    network: nn.Module
    spec: MemberSpec
    folder: Path

    @property
    def name(self) -> str:
        return self.folder.name


@dataclass(frozen=True)
class Ensemble:
    """A loaded model: its members (sorted by name), settings, folder and version (``model_version``)."""

    folder: Path
    members: tuple[Member, ...]
    settings: EnsembleSettings
    version: str

    @property
    def name(self) -> str:
        return self.settings.name or self.folder.name

    @property
    def table(self) -> LabelTable:
        """The label table every member shares (checked at load)."""
        return self.members[0].spec.table

    @property
    def specs(self) -> list[MemberSpec]:
        return [member.spec for member in self.members]

    @property
    def bf16(self) -> bool:
        """True when every member trained under bfloat16."""
        return all(spec.bf16 for spec in self.specs)

    @classmethod
    def from_networks(
        cls,
        networks: Sequence[tuple[nn.Module, Mapping[str, Any]]],
        settings: Mapping[str, Any] | None = None,
        folder: str | Path = ".",
    ) -> Ensemble:
        """An ensemble of networks in memory, each with its ``model.json``-like spec (tests, notebooks).

        Raises:
            ConfigError: a spec or the settings do not validate, or the members' labels differ.
        """
        try:
            members = tuple(
                Member(network.eval(), MemberSpec.model_validate(dict(spec)), Path(folder) / f"member{i}")
                for i, (network, spec) in enumerate(networks)
            )
            ensemble = cls(Path(folder), members, EnsembleSettings.model_validate(dict(settings or {})), "in-memory")
        except ValidationError as err:
            raise ConfigError(f"invalid model spec: {err.errors()[0]['msg']}") from err
        if not members:
            raise ConfigError("an ensemble needs at least one network")
        if any(member.spec.table != members[0].spec.table for member in members):
            raise ConfigError("ensemble members have different label tables; retrain them on one label table")
        return ensemble

    def with_settings(self, **updates: Any) -> Ensemble:
        """A copy whose settings have ``updates`` (validated)."""
        settings = EnsembleSettings.model_validate({**self.settings.model_dump(exclude_unset=True), **updates})
        return replace(self, settings=settings)

    def shape_guard_folder(self) -> Path | None:
        """The folder ``settings.shape_guard`` names, resolved against the model folder, or ``None``.

        Raises:
            InputError: it lies outside the model folder and outside the shipped weights
                (``deconvseg.pipeline.model_paths.model_reference``).
        """
        if not self.settings.shape_guard:
            return None
        return model_reference(self.folder, self.settings.shape_guard, "shape_guard")


def load_ensemble(folder: str | Path, device: str | torch.device = "cpu") -> Ensemble:
    """Read and validate a model folder (one checkpoint or an ensemble of them).

    Raises:
        InputError: naming the file, when the folder holds no checkpoint, a file is unreadable or a
            ``model.json``/``ensemble.json`` does not validate, or members disagree on their labels.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(
            folder, "no such model folder", "pass a checkpoint or ensemble folder, e.g. models/weights/acdc"
        )
    paths = [folder] if (folder / META).is_file() else sorted(p for p in folder.iterdir() if (p / META).is_file())
    for path in paths if paths != [folder] else []:  # a member linked in from elsewhere is not opened
        model_reference(folder, path.name, "member")
    if not paths:
        raise InputError(folder, f"no {META} in it or its subfolders", "pass a checkpoint or ensemble folder")
    members = tuple(_load_member(path, device) for path in paths)
    for member in members[1:]:
        if member.spec.table != members[0].spec.table:
            raise InputError(
                member.folder / META,
                f"labels differ from {members[0].name}'s",
                "retrain the members on one label table",
            )
    return Ensemble(folder, members, _read_settings(folder, members), model_version(folder))


def _load_member(path: Path, device: str | torch.device) -> Member:
    network, meta = load_checkpoint(path, device)
    meta.pop("checkpoint_dir", None)
    return Member(network, _validated(MemberSpec, meta, path / META), path)


def _read_settings(folder: Path, members: tuple[Member, ...]) -> EnsembleSettings:
    path = folder / ENSEMBLE
    if path.is_file():
        settings = _validated(EnsembleSettings, read_json(path, "ensemble config"), path)
    elif len(members) == 1:
        settings = EnsembleSettings(postprocess=members[0].spec.postprocess)
    else:
        settings = EnsembleSettings()
    names = [member.name for member in members]
    if settings.weights is not None and len(settings.weights) != len(members):
        raise InputError(
            path, f"{len(settings.weights)} fusion weights for {len(members)} members", "give one weight row per member"
        )
    if settings.weights_order is not None and settings.weights_order != names:
        raise InputError(
            path,
            f"weights_order {settings.weights_order} does not match the members {names}",
            "list the members in name order",
        )
    return settings


def _validated(model: type[BaseModel], data: dict[str, Any], path: Path) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "document"
        raise InputError(path, f"invalid {where}: {first['msg']}", "re-save the model with deconvseg train") from err


def model_version(folder: str | Path) -> str:
    """SHA-256 over the checkpoint files (``model.json``, weights, ``ensemble.json``) of a model folder.

    Raises:
        InputError: the folder holds no ``model.json``.
    """
    root = Path(folder)
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.name in (META, WEIGHTS, ENSEMBLE))
    if not any(p.name == META for p in files):
        raise InputError(
            root,
            f"no {META} found (not a checkpoint or ensemble folder)",
            "pass --model a folder written by 'deconvseg train'",
        )
    digest = hashlib.sha256()
    for file in files:
        digest.update(str(file.relative_to(root)).encode() + b"\0" + bytes.fromhex(file_digest(file)))
    return digest.hexdigest()
