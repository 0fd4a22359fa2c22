"""The Typer application and the one place where library errors become exit codes.

Command modules import heavy packages (torch, prefect) inside their functions, so that
``deconvseg --help`` and ``deconvseg info`` stay fast.

A refusal is exactly one line on stderr. While a command runs, whatever reaches the process's
standard error -- lines that C libraries print themselves (ITK's ``** ERROR: nifti_...``),
Python warnings, log records -- is held back; it is shown when the command ends in any other way
and dropped when the command is refused (the one line says what went wrong).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator
from typing import TextIO, TypeVar

import typer

from deconvseg.pipeline.errors import DeconvsegError
from deconvseg.pipeline.sanitize import terminal_text

app = typer.Typer(
    name="deconvseg",
    help="Segment 3D CT/MR volumes with max-pool-switch deconvolution networks.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

_OS_FIXES = {
    errno.ENOSPC: "free space on that disk or choose another output folder",
    errno.EFBIG: "the file is larger than this system allows (ulimit -f): raise the limit or write elsewhere",
    errno.EDQUOT: "free space within your quota or choose another output folder",
    errno.EACCES: "choose a folder you can write to, or change its permissions",
    errno.EPERM: "choose a folder you can write to, or change its permissions",
    errno.EROFS: "the file system is read-only: choose another output folder",
    errno.ENAMETOOLONG: "choose a shorter name or path",
    errno.ENOTDIR: "a file stands where a folder is needed: choose another path",
    errno.EISDIR: "a folder stands where a file is needed: choose another path",
}


def refusal(err: BaseException) -> str | None:
    """The one-line message of an error the CLI refuses with (``None`` for a bug, which keeps its traceback)."""
    if isinstance(err, DeconvsegError):
        return f"error: {terminal_text(str(err))}"
    if isinstance(err, OSError) and err.errno in _OS_FIXES:  # the environment failed: not retried, not a bug
        where = err.filename if err.filename is not None else "while writing"
        return f"error: {terminal_text(str(where))}: {(err.strerror or 'error').lower()}; {_OS_FIXES[err.errno]}"
    return None


class _HeldStderr:
    """File descriptor 2 and ``sys.stderr`` redirected into a temporary file until released."""

    def __init__(self) -> None:
        sys.stderr.flush()
        self._sink = tempfile.TemporaryFile()
        self._saved_fd = os.dup(2)
        self._saved_stream = sys.stderr
        os.dup2(self._sink.fileno(), 2)
        sys.stderr = open(os.dup(2), "w", buffering=1, encoding="utf-8", errors="backslashreplace")  # noqa: SIM115
        self.terminal = (
            open(os.dup(self._saved_fd), "w", buffering=1, encoding="utf-8", errors="replace")  # noqa: SIM115
            if os.isatty(self._saved_fd)
            else None
        )
        self.held = True

    def release(self, show: bool) -> None:
        """Restore the terminal; write what was held to it when ``show``."""
        if not self.held:
            return
        self.held = False
        if self.terminal:
            self.terminal.close()
            self.terminal = None
        sys.stderr.close()
        sys.stderr = self._saved_stream
        os.dup2(self._saved_fd, 2)
        os.close(self._saved_fd)
        with self._sink:
            if show:
                self._sink.seek(0)
                sys.stderr.flush()
                os.write(2, self._sink.read())


_HELD: list[_HeldStderr] = []


def release_stderr() -> None:
    """Show held output now and stop holding it (for a command whose refusals are over, e.g. before it
    starts a long-running child whose own output must stream)."""
    if _HELD:
        _HELD[-1].release(show=True)


def terminal() -> TextIO | None:
    """The terminal behind the held stderr, for live progress bars (erased when they end, so a refusal
    still leaves one line); ``None`` when standard error is not a terminal."""
    if not _HELD:
        return sys.stderr if sys.stderr.isatty() else None
    return _HELD[-1].terminal


@contextlib.contextmanager
def _held_stderr() -> Iterator[_HeldStderr]:
    held = _HeldStderr()
    _HELD.append(held)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default")  # shown (once per place) unless refused
            yield held
    finally:
        _HELD.remove(held)
        held.release(show=True)  # no-op when the refusal already dropped it


F = TypeVar("F", bound=Callable)


def one_line_errors(command: F) -> F:
    """Turn a library error (or a failure of the environment: full disk, permissions, a name too long)
    into exactly one line on stderr and exit status 2; stray output before it is dropped."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        with _held_stderr() as held:
            try:
                return command(*args, **kwargs)
            except (DeconvsegError, OSError) as err:
                message = refusal(err)
                if message is None:
                    raise
                held.release(show=False)
                print(message, file=sys.stderr)
                raise typer.Exit(code=2) from err

    return wrapper  # type: ignore[return-value]


@app.callback()
def main() -> None:
    """Segment 3D CT/MR volumes with max-pool-switch deconvolution networks."""
