"""Exceptions raised at the library's boundaries.

Every message is one line that names the file, the problem and the fix, e.g.
``scan.nii.gz: volume contains 12 NaN voxels; fix the export or pass --fill-nan``.
"""

from __future__ import annotations

from pathlib import Path


class DeconvsegError(Exception):
    """Base class of the errors this package raises on purpose."""


class InputError(DeconvsegError, ValueError):
    """An input file or folder cannot be used as given.

    Args:
        path: the offending file or folder.
        problem: what is wrong, in a few words.
        fix: what the user can do about it.
    """

    def __init__(self, path: str | Path, problem: str, fix: str) -> None:
        self.path = str(path)
        self.problem = problem
        self.fix = fix
        super().__init__(f"{self.path}: {problem}; {fix}".replace("\n", " "))


class ConfigError(DeconvsegError, ValueError):
    """A configuration value is invalid; the message names the key."""


class ResourceError(DeconvsegError, RuntimeError):
    """A case would exceed a configured resource budget (memory, voxels, time)."""
