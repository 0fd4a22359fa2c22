"""The Typer application and the one place where library errors become exit codes.

Command modules import heavy packages (torch, prefect) inside their functions, so that
``deconvseg --help`` and ``deconvseg info`` stay fast.
"""

from __future__ import annotations

import functools
import sys
from typing import Callable, TypeVar

import typer

from deconvseg.pipeline.errors import DeconvsegError

app = typer.Typer(
    name="deconvseg",
    help="Segment 3D CT/MR volumes with max-pool-switch deconvolution networks.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

F = TypeVar("F", bound=Callable)


def one_line_errors(command: F) -> F:
    """Turn a library error into its one-line message on stderr and exit status 2."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except DeconvsegError as err:
            print(f"error: {err}", file=sys.stderr)
            raise typer.Exit(code=2) from err

    return wrapper  # type: ignore[return-value]


@app.callback()
def main() -> None:
    """Segment 3D CT/MR volumes with max-pool-switch deconvolution networks."""
