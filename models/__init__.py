"""Networks, one per file; ``models.registry`` builds them by name and loads checkpoints."""
