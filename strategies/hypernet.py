"""Hypernetwork pieces of HyperInterval: interval embeddings -> weight boxes, init, intersection, loss."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clframe.strategies.intervals import ibp
from clframe.strategy import MASK_VALUE


def hnet_box(hnet: nn.Sequential, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
    """IBP through the hypernetwork (point weights): embedding boxes (T, d) -> output boxes (T, n_weights)."""
    params = [[m.weight, m.bias] for m in hnet if isinstance(m, nn.Linear)]
    return ibp(list(hnet), lo, hi, params, params)


@torch.no_grad()
def hyperfan_in_init(hnet: nn.Sequential, shapes: list[list[tuple[int, ...]]], embedding_dim: int) -> None:
    """Rescale the output layer so that, for random embeddings, each generated target layer has He-scale
    weights (std sqrt(2 / fan-in)), in the spirit of hyperfan-in init (Chang et al. 2020). PyTorch's
    default init gives std ~0.1-0.2 whatever the fan-in (2-4x He scale for a 784-input layer); with it the
    first Split-MNIST task did not learn in 100 steps (chance), with this init it does."""
    out, w, i = hnet[-1], hnet(torch.randn(256, embedding_dim)), 0
    for layer in shapes:
        gain = math.sqrt(2.0 / math.prod(layer[0][1:]))
        for shape in layer:
            n = math.prod(shape)
            factor = gain / max(float(w[:, i : i + n].std()), 1e-8)
            out.weight[i : i + n] *= factor
            out.bias[i : i + n] *= factor
            i += n


def box_intersection(lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor, int]:
    """Intersection of boxes (T, d); empty coordinates collapse to their midpoint. Returns (lo, hi, n_empty)."""
    lo, hi = lo.max(0).values, hi.min(0).values
    mid, empty = (lo + hi) / 2, lo > hi
    return torch.where(empty, mid, lo), torch.where(empty, mid, hi), int(empty.sum())


def interval_loss(z_lo: Tensor, z_mid: Tensor, z_hi: Tensor, y: Tensor, mask: Tensor, kappa: float) -> Tensor:
    """Authors' ``IBP_Loss``: ``kappa (CE(mid) + CE(lo) + CE(hi)) + (1 - kappa) CE(worst)``, where ``worst`` takes
    the lower bound for the true class and upper bounds for the others; ``mask`` marks disallowed classes."""
    z_lo, z_mid, z_hi = (z.masked_fill(mask, MASK_VALUE) for z in (z_lo, z_mid, z_hi))
    worst = torch.where(F.one_hot(y, z_lo.shape[1]).bool(), z_lo, z_hi).masked_fill(mask, MASK_VALUE)
    fit = F.cross_entropy(z_mid, y) + F.cross_entropy(z_lo, y) + F.cross_entropy(z_hi, y)
    return kappa * fit + (1 - kappa) * F.cross_entropy(worst, y)
