"""Autoencoders: the MNIST comparison (``fit``, ``mnist``, ``report``) and the shape guard that
scores label maps (``guard``, ``score``, ``guard_training``, ``corruption``)."""
