"""Typed configuration: defaults live beside the code (pydantic models); YAML only overrides.

``load_config(path, Model)`` validates a YAML file against a model and turns any validation
problem into a one-line ``ConfigError`` that names the file and the key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from deconvseg.pipeline.errors import ConfigError, InputError

M = TypeVar("M", bound=BaseModel)


class Settings(BaseModel):
    """Base for config models: frozen, and unknown keys are errors (typos must not pass)."""

    model_config = ConfigDict(frozen=True, extra="forbid")


def validate_config(data: dict[str, Any], model: type[M], source: str = "config") -> M:
    """Build ``model`` from a mapping, naming the offending key on failure."""
    try:
        return model.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        key = ".".join(str(part) for part in first["loc"]) or "(top level)"
        raise ConfigError(f"{source}: key '{key}': {first['msg']}; fix the value or remove the key") from err


def load_config(path: str | Path, model: type[M], overrides: dict[str, Any] | None = None) -> M:
    """Read a YAML file (a mapping) and validate it against ``model``."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "config file not found", "check the path (see configs/ for examples)")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err.__class__.__name__}); fix the syntax") from err
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of keys; fix the file")
    return validate_config({**data, **(overrides or {})}, model, source=str(path))
