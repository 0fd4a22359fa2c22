"""``deconvseg`` command line. Each command lives in its own module and registers on ``app``."""

from deconvseg.flows.cli.app import app
from deconvseg.flows.cli import info  # noqa: F401  (registers commands)
from deconvseg.flows.cli import batch  # noqa: F401
from deconvseg.flows.cli import export  # noqa: F401
from deconvseg.flows.cli import deblur  # noqa: F401
from deconvseg.flows.cli import train  # noqa: F401
from deconvseg.flows.cli import segment  # noqa: F401
from deconvseg.flows.cli import autoencoder  # noqa: F401
from deconvseg.flows.cli import viewer  # noqa: F401
from deconvseg.flows.cli import pacs  # noqa: F401

__all__ = ["app"]
