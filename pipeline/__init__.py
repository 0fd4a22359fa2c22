"""deconvseg library: plain functions and small classes on numpy/torch (no Prefect, no printing)."""
