"""Naive fine-tuning: the base class as it is (lower bound)."""

from clframe.registry import register_strategy
from clframe.strategy import Capabilities, Strategy


@register_strategy("naive")
class Naive(Strategy):
    """Fine-tunes on each experience with cross-entropy; no protection against forgetting."""

    capabilities = Capabilities(language_model=True)
