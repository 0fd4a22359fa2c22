"""``deconvseg`` command line. Each command lives in its own module and registers on ``app``."""

from flows.cli.app import app
from flows.cli import info  # noqa: F401  (registers commands)
from flows.cli import batch  # noqa: F401
from flows.cli import export  # noqa: F401
from flows.cli import deblur  # noqa: F401
from flows.cli import train  # noqa: F401
from flows.cli import segment  # noqa: F401
from flows.cli import autoencoder  # noqa: F401

__all__ = ["app"]
