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


MAX_CONFIG_BYTES = 1 << 20  # a config is a few dozen lines; anything near this is not one


class _PlainLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` without aliases: a config never needs ``&a``/``*a``, and aliases are how a
    small YAML document expands to gigabytes once it is copied or validated ("billion laughs")."""

    def compose_node(self, parent, index):  # noqa: ANN001 (PyYAML's signature)
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None, None, "aliases (*name) are not allowed in a config", event.start_mark
            )
        return super().compose_node(parent, index)


def _parse(text: str) -> Any:
    """One YAML document through ``_PlainLoader`` (safe constructors, no aliases)."""
    loader = _PlainLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def load_config(path: str | Path, model: type[M], overrides: dict[str, Any] | None = None) -> M:
    """Read a YAML file (a mapping) and validate it against ``model``.

    Raises:
        InputError: the file is missing or larger than ``MAX_CONFIG_BYTES``.
        ConfigError: not YAML, uses aliases, not a mapping, or a key is unknown or invalid.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "config file not found", "check the path (see configs/ for examples)")
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise InputError(
            path,
            f"config of {path.stat().st_size} bytes is larger than {MAX_CONFIG_BYTES}",
            "pass a config file (a few YAML keys), not data",
        )
    try:
        data = _parse(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text; save the config as UTF-8") from err
    except yaml.composer.ComposerError as err:
        raise ConfigError(f"{path}: {err.problem}; write the values out") from err
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err.__class__.__name__}); fix the syntax") from err
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of keys; fix the file")
    return validate_config({**data, **(overrides or {})}, model, source=str(path))
