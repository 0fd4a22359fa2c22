"""Where a command may write, checked before anything is read, computed or created.

Every command that writes takes an output folder. These checks refuse, in one line, what would
otherwise end in a traceback half-way or -- worse -- replace something of the user's:

- a path through or onto an existing **file** (``--out report.pdf``), or a symbolic link;
- a folder that cannot be written (permissions, a read-only file system);
- a name or path longer than the file system allows;
- a bundle folder that exists and is not a deconvseg bundle (a user's folder is never replaced;
  an empty folder or a bundle this package wrote earlier is).

A full disk cannot be foreseen; writers stay atomic, so it ends as one ``OSError`` and nothing
half-written (the CLI turns it into one line).
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from pathlib import Path

from deconvseg.pipeline.errors import InputError

BUNDLE_MARKER = "manifest.json"  # every bundle has one, written last
_MARKER_MAX_BYTES = 16 << 20


def check_output_root(path: str | Path) -> Path:
    """Check a folder that will receive bundles or other outputs (created later if absent).

    Returns:
        The path, absolute.

    Raises:
        InputError: a file or link stands at the path or on the way to it, a name or the path
            is too long, or the folder (or the nearest existing folder above it) is not writable.
    """
    path = Path(path).expanduser().absolute()
    _check_lengths(path)
    existing = path
    while not _exists(existing):
        existing = existing.parent
    if existing.is_symlink() and not existing.is_dir():
        raise InputError(existing, "is a broken symbolic link", "remove it or choose another output folder")
    if not existing.is_dir():
        role = "output folder" if existing == path else f"output folder {path}"
        raise InputError(
            existing,
            f"is a file, not a folder (the {role} would replace or need it)",
            "choose another output folder; the file is left as it is",
        )
    try:  # a real probe: permission bits say nothing about root, read-only mounts or quotas
        os.rmdir(tempfile.mkdtemp(prefix=".deconvseg-probe-", dir=existing))
    except OSError as err:
        raise InputError(
            existing,
            f"folder is not writable ({(err.strerror or 'error').lower()})",
            "choose a folder you can write to, or change its permissions",
        ) from err
    return path


def check_bundle_target(path: str | Path) -> Path:
    """Check a bundle folder before it is (re)written: only an empty folder or a bundle may be replaced.

    Raises:
        InputError: everything ``check_output_root`` refuses for its parent; a file, a symbolic
            link or a non-empty folder that is not a deconvseg bundle at ``path``.
    """
    path = Path(path).expanduser().absolute()
    check_output_root(path.parent)
    _check_lengths(path)
    if path.is_symlink():
        raise InputError(path, "is a symbolic link", "choose an output folder that is not a link")
    if path.exists() and not path.is_dir():
        raise InputError(
            path, "is a file, not a bundle folder", "choose another output folder; the file is left as it is"
        )
    if path.is_dir() and any(path.iterdir()) and not is_bundle(path):
        raise InputError(
            path,
            "exists and is not a deconvseg bundle (no manifest.json of ours)",
            "choose another output folder; nothing in this one is replaced",
        )
    return path


def is_bundle(path: Path) -> bool:
    """True when ``path`` holds a ``manifest.json`` that this package wrote (it names deconvseg's version)."""
    marker = path / BUNDLE_MARKER
    try:
        if not marker.is_file() or marker.is_symlink() or marker.stat().st_size > _MARKER_MAX_BYTES:
            return False
        manifest = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(manifest, dict) and "deconvseg" in (manifest.get("software") or {})


def _exists(path: Path) -> bool:
    try:
        return path.exists() or path.is_symlink()
    except OSError:  # e.g. ENAMETOOLONG: reported by the length check
        return False


def _check_lengths(path: Path) -> None:
    """Refuse a component or a whole path longer than the file system allows (``ENAMETOOLONG`` up front)."""
    existing = path
    while not _exists(existing):
        existing = existing.parent
    try:
        name_max = os.pathconf(existing, "PC_NAME_MAX")
        path_max = os.pathconf(existing, "PC_PATH_MAX")
    except (OSError, ValueError):
        name_max, path_max = 255, 4096
    long_part = next((part for part in path.parts if len(os.fsencode(part)) > name_max), None)
    if long_part is not None:
        raise InputError(
            f"{long_part[:40]}...",
            f"name of {len(os.fsencode(long_part))} bytes is longer than the "
            f"file system allows ({name_max}); {os.strerror(errno.ENAMETOOLONG).lower()}",
            "choose a shorter output name",
        )
    if len(os.fsencode(str(path))) + 64 > path_max:  # room for the names written inside
        raise InputError(
            f"{str(path)[:40]}...",
            f"path of {len(os.fsencode(str(path)))} bytes is too long for this file system ({path_max})",
            "choose a shorter output path",
        )
