"""deconvseg library: plain functions and small classes on numpy/torch (no Prefect, no printing)."""

if __name__ != "deconvseg.pipeline":  # one module object per file: a second name would duplicate every class
    raise ImportError(f"this folder is installed as deconvseg.pipeline; import it by that name, not {__name__!r}")
