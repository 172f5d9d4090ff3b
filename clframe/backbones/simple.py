"""Small backbones for MNIST-scale data: an MLP and a small CNN."""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

from torch import Tensor, nn

from clframe.registry import register_backbone


def _cast_inputs_first(forward_features):
    """``forward_features`` that first casts floating-point inputs to the dtype of the backbone's weights, so that
    ``trainer.precision=64-true`` / ``bf16-true`` (weights cast by Lightning) accept the float32 data of streams,
    memories and test sets wherever they enter the model (token ids and fp32 weights: unchanged)."""

    @functools.wraps(forward_features)
    def wrapped(self, x, *args, **kwargs):
        return forward_features(self, in_weight_dtype(self, x), *args, **kwargs)

    return wrapped


def in_weight_dtype(module: nn.Module, x):
    """``x`` cast to the dtype of ``module``'s first weight when both are floating point and differ; else ``x``."""
    if isinstance(x, Tensor) and x.is_floating_point():
        weight = next(module.parameters(), None)
        if weight is not None and weight.is_floating_point() and weight.dtype != x.dtype:
            return x.to(weight.dtype)
    return x


class Backbone(nn.Module):
    """Contract shared by all backbones: ``forward_features`` → (N, num_features), for inputs of any float dtype
    (cast to the weights' dtype: each subclass's ``forward_features`` is wrapped by :func:`_cast_inputs_first`)."""

    num_features: int

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "forward_features" in cls.__dict__:
            cls.forward_features = _cast_inputs_first(cls.__dict__["forward_features"])

    def forward_features(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_features(x)


@register_backbone("mlp")
class MLP(Backbone):
    """Fully connected ReLU network on flattened inputs (van de Ven et al.: 2 x 400 for MNIST)."""

    def __init__(self, input_shape: Sequence[int], hidden: Sequence[int] = (400, 400), dropout: float = 0.0):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = math.prod(input_shape)
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = h
        self.net = nn.Sequential(*layers)
        self.num_features = width

    def forward_features(self, x: Tensor) -> Tensor:
        return self.net(x)


@register_backbone("cnn")
class SmallCNN(Backbone):
    """Conv(3x3)-BN-ReLU blocks with 2x2 max-pooling, then global average pooling."""

    def __init__(self, input_shape: Sequence[int], channels: Sequence[int] = (32, 64, 128), batch_norm: bool = True):
        super().__init__()
        layers: list[nn.Module] = []
        c_in = input_shape[0]
        for c in channels:
            layers += [nn.Conv2d(c_in, c, 3, padding=1, bias=not batch_norm)]
            layers += [nn.BatchNorm2d(c)] if batch_norm else []
            layers += [nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True)]
            c_in = c
        self.net = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.num_features = c_in

    def forward_features(self, x: Tensor) -> Tensor:
        return self.net(x)


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


__all__ = ["Backbone", "MLP", "SmallCNN", "count_parameters"]
