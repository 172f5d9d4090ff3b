"""Stream builders, registered by name (``scenario.name`` in the config)."""

from scenarios import permuted, splits  # noqa: F401  (registers builders)
