"""clframe: continual learning and machine unlearning as events of one stream.

Importing ``clframe`` is cheap; torch / lightning load when a run starts.
"""

__version__ = "0.1.0"


def run(cfg):
    """Run an experiment config (see :func:`clframe.runner.run`)."""
    from clframe.runner import run as _run

    return _run(cfg)


def compose(overrides=(), config_name: str = "config"):
    """Compose a config from ``experiments/`` with Hydra overrides (see :mod:`clframe.config`)."""
    from clframe.config import compose as _compose

    return _compose(overrides, config_name)
