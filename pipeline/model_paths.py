"""Which model folder a ``--model`` value means, and which files a model folder may point at.

``resolve_model``: a *name* (``acdc``, no separator) means a shipped model under
``deconvseg.models.WEIGHTS_ROOT`` -- never a folder of that name in the working directory. A
value is a *path* only when it looks like one (it holds a separator or starts with ``.`` or ``~``).
The README's ``models/weights/<name>`` also works from any folder.

``model_reference``: a model folder is input like any other. What its JSON names (a shape guard,
a member) is opened only when it lies inside that folder or inside the shipped weights root; a
name such as ``../../home/user/.ssh`` or an absolute path is refused unless the caller passes it.
"""

from __future__ import annotations

import os
from pathlib import Path

from deconvseg.models import WEIGHTS_ROOT
from deconvseg.pipeline.errors import InputError

_README_PREFIX = ("models", "weights")


def shipped_models(root: Path = WEIGHTS_ROOT) -> list[str]:
    """Names of the shipped model folders."""
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")) if root.is_dir() else []


def looks_like_path(value: str) -> bool:
    """True for ``./acdc``, ``~/m``, ``/abs``, ``a/b``; false for a bare name such as ``acdc``."""
    return "/" in value or os.sep in value or value.startswith((".", "~"))


def resolve_model(value: str | Path, root: Path = WEIGHTS_ROOT) -> Path:
    """The model folder that ``value`` names.

    Raises:
        InputError: no shipped model of that name, or no folder at that path.
    """
    text = str(value)
    if not looks_like_path(text):
        folder = root / text
        if text and folder.is_dir():
            return folder
        raise InputError(
            text,
            "no shipped model of that name",
            f"choose one of {shipped_models(root)}, or give a folder as a path (./{text})",
        )
    path = Path(text).expanduser()
    if path.is_dir():
        return path
    parts = Path(text).parts
    if (
        not path.is_absolute()
        and parts[: len(_README_PREFIX)] == _README_PREFIX
        and (root.joinpath(*parts[2:])).is_dir()
    ):
        return root.joinpath(*parts[2:])  # the README's models/weights/<name>, from any folder
    raise InputError(
        path, "no such model folder", f"give a checkpoint/ensemble folder or a shipped name {shipped_models(root)}"
    )


def model_reference(folder: Path, reference: str, key: str, root: Path = WEIGHTS_ROOT) -> Path:
    """The path that ``reference`` (found under ``key`` in ``folder``'s JSON) names, if the folder may name it.

    Args:
        folder: the model folder whose JSON holds the reference.
        reference: the path as written there, relative to ``folder`` (``"../shape-ae-acdc"``).
        key: the JSON key, for the message.
        root: the shipped weights, which shipped models may reference among themselves.

    Raises:
        InputError: the reference resolves (links followed) outside ``folder`` and outside ``root``.
    """
    base = Path(folder).resolve()
    target = (base / reference).resolve()
    allowed = [base, root.resolve()]
    if not any(target == a or a in target.parents for a in allowed):
        raise InputError(
            base,
            f"'{key}' names {reference!r}, outside the model folder",
            "copy it into the model folder, or pass it explicitly on the command line",
        )
    return target
