"""Patch-based training of ensemble members: data (``data``, ``augment``), loss (``losses``), the loop
and the ensemble gather (``trainer``), resumable state (``checkpointing``)."""
