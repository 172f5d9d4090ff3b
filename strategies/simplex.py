"""d-Simplex fixed classifier (Pernici et al.): K class prototypes at the vertices of a regular
simplex in R^(K-1), fixed and pre-allocated for classes not seen yet. Features trained against
them stay stationary as classes are added, which makes old and new features compatible
(CoReS, CL2R, "Stationary Representations")."""

from __future__ import annotations

import torch
from torch import Tensor, nn


def dsimplex(n_classes: int) -> Tensor:
    """``(n_classes, n_classes - 1)`` unit vectors with pairwise cosine ``-1 / (n_classes - 1)``."""
    if n_classes < 2:
        raise ValueError(f"a d-Simplex needs at least 2 classes, got {n_classes}")
    d = n_classes - 1
    v = torch.cat(
        [torch.eye(d, dtype=torch.float64), torch.full((1, d), (1 - (1 + d) ** 0.5) / d, dtype=torch.float64)]
    )
    v = v - v.mean(0)  # centre: the vertices of a regular simplex around the origin
    return (v / v.norm(dim=1, keepdim=True)).float()


class SimplexHead(nn.Module):
    """A learnable linear projection to ``K - 1`` dimensions (the representation used for
    retrieval) followed by the fixed d-Simplex classifier (no bias, not trained)."""

    def __init__(self, in_features: int, n_classes: int):
        super().__init__()
        self.proj = nn.Linear(in_features, n_classes - 1, bias=False)
        self.register_buffer("prototypes", dsimplex(n_classes))

    def embed(self, h: Tensor) -> Tensor:
        return self.proj(h)

    def forward(self, z: Tensor) -> Tensor:
        """Logits of embedded features ``z`` against every (also future) class prototype."""
        return z @ self.prototypes.T
