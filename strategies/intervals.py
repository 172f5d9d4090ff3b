"""Interval arithmetic / interval bound propagation (IBP) through plain layer sequences.

An interval is a pair ``(lo, hi)`` of tensors with ``lo <= hi`` elementwise. Weights may be
intervals too (``InterContiNet`` / HyperInterval): a linear map with weight box ``[w_lo, w_hi]``
applied to the input box gives a box that contains every ``W x`` with ``W`` and ``x`` inside theirs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import partial

import torch.nn.functional as F
from torch import Tensor, nn

from clframe.errors import ConfigError

Interval = tuple[Tensor, Tensor]
MONOTONE = (nn.ReLU, nn.Flatten, nn.MaxPool2d, nn.AdaptiveAvgPool2d, nn.AvgPool2d, nn.Identity, nn.Dropout)


def interval_affine(
    op: Callable,
    lo: Tensor,
    hi: Tensor,
    w_lo: Tensor,
    w_hi: Tensor,
    b_lo: Tensor | None = None,
    b_hi: Tensor | None = None,
) -> Interval:
    """Bounds of ``op(x, W) + b`` (``op`` bilinear: linear / conv) for ``x``, ``W``, ``b`` in their boxes.

    Point weights (``w_lo is w_hi``): ``op(m, W) ± op(r, |W|)``, exact. Interval weights: exact per
    output for non-negative inputs (after a ReLU): ``lo W_lo^+ + hi W_lo^-`` and
    ``hi W_hi^+ + lo W_hi^-``. Otherwise the midpoint-radius form, exact for point inputs or
    point weights and sound in general: ``op(m, Wm) ± (op(|m|, Wr) + op(r, |Wm|) + op(r, Wr))``.
    """
    if w_lo is w_hi:  # point weights (e.g. the hypernetwork's own): centre +- radius, two ops
        m, r = (hi + lo) / 2, (hi - lo) / 2
        centre, radius = op(m, w_lo), op(r, w_lo.abs())
        out_lo, out_hi = centre - radius, centre + radius
    elif bool((lo >= 0).all()):
        out_lo = op(lo, w_lo.clamp(min=0)) + op(hi, w_lo.clamp(max=0))
        out_hi = op(hi, w_hi.clamp(min=0)) + op(lo, w_hi.clamp(max=0))
    else:
        m, r = (hi + lo) / 2, (hi - lo) / 2
        wm, wr = (w_hi + w_lo) / 2, (w_hi - w_lo) / 2
        centre = op(m, wm)
        radius = op(m.abs(), wr) + op(r, wm.abs()) + op(r, wr)
        out_lo, out_hi = centre - radius, centre + radius
    if b_lo is not None:
        shape = (1, -1) + (1,) * (out_lo.dim() - 2)
        out_lo, out_hi = out_lo + b_lo.view(shape), out_hi + b_hi.view(shape)
    return out_lo, out_hi


def layer_op(layer: nn.Module) -> Callable:
    """The bilinear function ``(x, W) -> y`` of a linear or conv layer (its other settings bound)."""
    if isinstance(layer, nn.Linear):
        return F.linear
    if isinstance(layer, nn.Conv2d):
        return partial(
            F.conv2d, stride=layer.stride, padding=layer.padding, dilation=layer.dilation, groups=layer.groups
        )
    raise TypeError(type(layer).__name__)


def leaf_layers(module: nn.Module) -> list[nn.Module]:
    """The leaf modules of a plain feed-forward network, in order; rejects what IBP here cannot bound."""
    leaves = [m for m in module.modules() if not list(m.children())]
    for m in leaves:
        if not isinstance(m, (nn.Linear, nn.Conv2d, *MONOTONE)):
            raise ConfigError(
                "backbone",
                type(m).__name__,
                ["Linear", "Conv2d", "ReLU", "pooling", "Flatten"],
                hint="interval propagation supports plain Linear/Conv + ReLU/pooling networks "
                "(e.g. backbone=mlp, or backbone=cnn backbone.batch_norm=false)",
            )
    return leaves


def ibp(
    layers: Sequence[nn.Module],
    lo: Tensor,
    hi: Tensor,
    w_lo: Sequence[Sequence[Tensor]],
    w_hi: Sequence[Sequence[Tensor]],
) -> Interval:
    """Propagate the input box through ``layers``; ``w_lo[i]`` / ``w_hi[i]`` = (weight, bias) bounds of the
    i-th parametrised layer. Monotone layers (ReLU, pooling, flatten) map the bounds directly."""
    k = 0
    for layer in layers:
        if isinstance(layer, (nn.Linear, nn.Conv2d)):
            (wl, *bl), (wh, *bh) = w_lo[k], w_hi[k]
            lo, hi = interval_affine(layer_op(layer), lo, hi, wl, wh, bl[0] if bl else None, bh[0] if bh else None)
            k += 1
        elif not isinstance(layer, nn.Dropout):
            lo, hi = layer(lo), layer(hi)
    return lo, hi


def forward_point(layers: Sequence[nn.Module], x: Tensor, weights: Sequence[Sequence[Tensor]]) -> Tensor:
    """Ordinary forward pass of ``layers`` with externally given (weight, bias) per parametrised layer."""
    k = 0
    for layer in layers:
        if isinstance(layer, (nn.Linear, nn.Conv2d)):
            w, *b = weights[k]
            x = layer_op(layer)(x, w) + (b[0].view((1, -1) + (1,) * (x.dim() - 2)) if b else 0)
            k += 1
        elif not isinstance(layer, nn.Dropout):
            x = layer(x)
    return x


def mlp(dims: Sequence[int]) -> nn.Sequential:
    """``Linear(d0, d1), ReLU, ..., Linear(d_{n-1}, d_n)`` (no activation after the last layer)."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
        layers += [nn.Linear(a, b)] + ([nn.ReLU()] if i < len(dims) - 2 else [])
    return nn.Sequential(*layers)


def param_shapes(layers: Sequence[nn.Module]) -> list[list[tuple[int, ...]]]:
    """(weight, bias) shapes of the parametrised layers, in order."""
    return [
        [tuple(p.shape) for p in (m.weight, m.bias) if p is not None]
        for m in layers
        if isinstance(m, (nn.Linear, nn.Conv2d))
    ]


def unflatten(flat: Tensor, shapes: Sequence[Sequence[tuple[int, ...]]]) -> list[list[Tensor]]:
    """Split a flat weight vector into per-layer (weight, bias) views of the given shapes."""
    out, i = [], 0
    for layer in shapes:
        out.append([])
        for s in layer:
            out[-1].append(flat[i : i + math.prod(s)].view(s))
            i += math.prod(s)
    return out
