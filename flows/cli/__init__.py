"""``deconvseg`` command line. Each command lives in its own module and registers on ``app``."""

from deconvseg.flows.cli import (
    autoencoder,  # noqa: F401
    batch,  # noqa: F401
    deblur,  # noqa: F401
    export,  # noqa: F401
    info,  # noqa: F401  (registers commands)
    pacs,  # noqa: F401
    segment,  # noqa: F401
    train,  # noqa: F401
    viewer,  # noqa: F401
)
from deconvseg.flows.cli.app import app

__all__ = ["app"]
