"""Prefect flows and the command line: thin compositions of the ``pipeline`` library."""

if __name__ != "deconvseg.flows":  # one module object per file: a second name would duplicate every class
    raise ImportError(f"this folder is installed as deconvseg.flows; import it by that name, not {__name__!r}")
