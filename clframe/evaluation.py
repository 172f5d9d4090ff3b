"""Evaluators: measurements taken after every stream event, beyond the accuracy matrix.

An evaluator is registered with ``@register_evaluator("name")`` and listed in the config
(``evaluators: [{name: retrieval, ...}]``). The runner calls :meth:`after_event` after each
learn / forget event and stores the returned floats in ``metrics.json["evaluations"]``; at the
end :meth:`finalize` returns headline metrics (and may write plots into ``run_dir/plots``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clframe.errors import ConfigError


@dataclass
class RunContext:
    """What an evaluator gets of the run instead of its config (the runner's ``build`` reads the config once).

    Attributes:
        run_dir: the run directory (plots, caches).
        seed: the run's seed (per-event seeds derive from it).
        engine: the run's :class:`clframe.fit.Engine` (device, progress bar).
        training_key: a hash of what determines training — the scenario, strategy, backbone and pretraining
            nodes the objects were built from, the engine's options and the seed (cache keys start from it).
        new_strategy: ``new_strategy(workdir)`` → a freshly initialised strategy as the run's was (same seed);
            with a folder, pretrained there as the run was (``None``: no pretraining, e.g. to load weights).
        learn: ``learn(strategy, exp, wrap_loader=None)`` trains one learn experience with the run's engine.
        plots: whether the run writes plots.
        unlearning: the name of the run's unlearning method (labels), or ``None``.
    """

    run_dir: Path
    seed: int
    engine: Any
    training_key: str
    new_strategy: Callable[[Path | None], Any]
    learn: Callable[..., int]
    plots: bool = True
    unlearning: str | None = None


class Evaluator:
    """Base class: override :meth:`after_event`, optionally :meth:`finalize` and the state pair.

    :attr:`models` names the kinds of strategy it measures (``classifier``, ``language_model``); the run
    refuses another kind before anything is written (:func:`check_evaluators`)."""

    models: tuple[str, ...] = ("classifier",)

    def setup(self, context: RunContext) -> None:
        """Called once before the stream (e.g. to keep ``context`` for retraining an oracle)."""

    def after_event(self, strategy, stream, exp, device: torch.device) -> dict[str, Any]:
        raise NotImplementedError

    def finalize(self, run_dir: Path, result: dict[str, Any]) -> dict[str, float]:
        """Headline metrics computed from all events (merged into ``metrics.json["metrics"]``)."""
        return {}

    def state(self) -> dict[str, Any]:
        """What resume needs (tensors / plain containers)."""
        return {}

    def load_state(self, state: dict[str, Any]) -> None:
        pass


def check_evaluators(evaluators: dict[str, Evaluator], strategy) -> None:
    """Every evaluator measures this kind of strategy (a class head, or a causal language model)."""
    kind = "language_model" if getattr(strategy, "language_model", False) else "classifier"
    for name, evaluator in evaluators.items():
        if kind not in evaluator.models:
            raise ConfigError(
                "evaluators", name, hint=f"it measures {', '.join(evaluator.models)} strategies, not a {kind}"
            )


def retained_matrix(correct, total, removed: Iterable[int] = ()) -> np.ndarray:
    """``R`` without the removed classes: ``R[i, j] = sum_c correct[i, j, c] / sum_c total[i, j, c]``, c not removed.

    ``correct`` / ``total``: ``(rows, columns, n_classes)`` counts of correctly classified and of
    all test samples per evaluation row, test column and class. An entry whose classes were all
    removed (denominator 0) is NaN.
    """
    correct, total = np.asarray(correct, dtype=float), np.asarray(total, dtype=float)
    if correct.ndim != 3 or correct.shape != total.shape:
        raise ValueError(f"correct and total must have the same 3-D shape, got {correct.shape} and {total.shape}")
    keep = np.ones(correct.shape[2], dtype=bool)
    removed = sorted({int(c) for c in removed})
    if removed and not 0 <= removed[0] <= removed[-1] < len(keep):
        raise ValueError(f"removed classes {removed} out of range for {len(keep)} classes")
    keep[removed] = False
    num, den = correct[..., keep].sum(-1), total[..., keep].sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)
