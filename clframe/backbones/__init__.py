"""Feature extractors. Every backbone has ``forward_features(x)`` and ``num_features``;
the classification head belongs to the :class:`~clframe.strategy.Strategy`. Every module here is
imported by :func:`clframe.registry.load_plugins` (discovery)."""

from clframe.backbones.simple import MLP, SmallCNN
from clframe.backbones.vit import ViT

__all__ = ["MLP", "SmallCNN", "ViT"]
