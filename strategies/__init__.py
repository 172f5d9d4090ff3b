"""Continual-learning and unlearning methods, one module per family, registered by name."""

from strategies import ewc, joint, lwf, naive, replay  # noqa: F401  (registers strategies)
