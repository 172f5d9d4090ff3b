"""Compose experiment configs from ``experiments/`` without the command line (tests, notebooks)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig

from clframe.registry import package_dir


def config_dir() -> Path:
    """The folder that holds ``config.yaml`` and the config groups (package ``clframe.experiments``, found
    without importing it: configs are data)."""
    return package_dir("clframe.experiments").resolve()


def compose(overrides: Sequence[str] = (), config_name: str = "config") -> DictConfig:
    """Compose the experiment config with Hydra-style ``overrides`` (``["strategy=ewc", "seed=1"]``)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return hydra_compose(config_name=config_name, overrides=list(overrides))
