"""Feature extractors. Every backbone has ``forward_features(x)`` and ``num_features``;
the classification head belongs to the :class:`~clframe.strategy.Strategy`."""

from clframe.backbones.simple import MLP, SmallCNN

__all__ = ["MLP", "SmallCNN"]
