"""Stream builders, registered by name (``scenario.name`` in the config).

Every module here is imported by :func:`clframe.registry.load_plugins` (discovery)."""
