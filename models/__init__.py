"""Networks, one per file; ``deconvseg.models.registry`` builds them by name and loads checkpoints."""

from pathlib import Path

if __name__ != "deconvseg.models":  # one module object per file: a second name would duplicate every class
    raise ImportError(f"this folder is installed as deconvseg.models; import it by that name, not {__name__!r}")

WEIGHTS_ROOT = Path(__file__).resolve().parent / "weights"  # the shipped models, one folder each
