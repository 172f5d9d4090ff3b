"""Evaluators: measurements taken after every stream event, beyond the accuracy matrix.

An evaluator is registered with ``@register_evaluator("name")`` and listed in the config
(``evaluators: [{name: retrieval, ...}]``). The runner calls :meth:`after_event` after each
learn / forget event and stores the returned floats in ``metrics.json["evaluations"]``; at the
end :meth:`finalize` returns headline metrics (and may write plots into ``run_dir/plots``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch


class Evaluator:
    """Base class: override :meth:`after_event`, optionally :meth:`finalize` and the state pair."""

    def setup(self, cfg, run_dir: Path) -> None:
        """Called once before the stream with the run's config (e.g. to retrain an oracle)."""

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
