"""Prefect flows and the command line: thin compositions of the ``pipeline`` library."""
