"""Stream builders, registered by name (``scenario.name`` in the config)."""

from scenarios import permuted, splits  # noqa: F401  (registers builders)
from scenarios import unlearning  # noqa: F401  (issue 8: forget requests, stage orderings)
from scenarios import avalanche_adapter, streams  # noqa: F401  (issue 4: CIFAR-10, rotated, blurry, Avalanche)
