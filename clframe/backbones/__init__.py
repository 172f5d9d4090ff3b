"""Feature extractors. Every backbone has ``forward_features(x)`` and ``num_features``;
the classification head belongs to the :class:`~clframe.strategy.Strategy`."""

from clframe.backbones import resnet, timm_adapter  # noqa: F401,E402  (registers resnet18, timm)
from clframe.backbones.simple import MLP, SmallCNN
from clframe.backbones.vit import ViT

__all__ = ["MLP", "SmallCNN", "ViT"]
