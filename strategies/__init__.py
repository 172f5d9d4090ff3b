"""Continual-learning and unlearning methods, one module per family, registered by name.

Every module here is imported by :func:`clframe.registry.load_plugins` (discovery): a new file needs no
list entry."""
