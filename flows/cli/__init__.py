"""``deconvseg`` command line. Each command lives in its own module and registers on ``app``."""

from flows.cli.app import app
from flows.cli import info  # noqa: F401  (registers commands)

__all__ = ["app"]
