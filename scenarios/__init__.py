"""Stream builders, registered by name (``scenario.name`` in the config)."""

from scenarios import (  # noqa: F401  (registers builders)  # noqa: F401  (issue 4: CIFAR-10, rotated, blurry, Avalanche)
    avalanche_adapter,
    permuted,
    splits,
    streams,
    unlearning,  # noqa: F401  (issue 8: forget requests, stage orderings)
)
