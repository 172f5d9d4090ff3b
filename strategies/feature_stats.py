"""Per-class Gaussian feature statistics: a rehearsal-free memory of old classes.

Used by DESIRE (decision-boundary refinement, drift calibration) and reusable by other
rehearsal-free methods that retrain a classifier on sampled pseudo-features (SLCA, FeCAM-style).
Memory per class: ``d`` floats (mean) + ``d(d+1)/2`` (full covariance) or ``d`` (diagonal).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clframe.errors import ConfigError
from clframe.stream import TensorData

COVARIANCES = ("full", "diag")


@torch.no_grad()
def extract_features(strategy, data: TensorData, batch_size: int = 256) -> Tensor:
    """Backbone features of ``data`` in eval mode, on the strategy's device (no augmentation)."""
    was_training = strategy.training
    strategy.eval()
    dev = strategy.head.weight.device
    out = torch.cat([strategy.features(data.x[i : i + batch_size].to(dev)) for i in range(0, len(data), batch_size)])
    strategy.train(was_training)
    return out


class ClassGaussians:
    """Mean and covariance of the features of each class seen so far (no inputs are kept)."""

    def __init__(self, covariance: str = "full", shrink: float = 1e-3):
        if covariance not in COVARIANCES:
            raise ConfigError("strategy.covariance", covariance, COVARIANCES)
        self.covariance, self.shrink = covariance, shrink
        self.means: dict[int, Tensor] = {}
        self.covs: dict[int, Tensor] = {}  # (d, d) or (d,)

    def __len__(self) -> int:
        return len(self.means)

    def update(self, feats: Tensor, y: Tensor) -> None:
        """(Re)compute the statistics of every class present in ``y``."""
        for c in torch.unique(y).tolist():
            f = feats[y == c].double()
            self.means[c] = f.mean(0).float()
            cen = f - f.mean(0)
            n = max(len(f) - 1, 1)
            self.covs[c] = (cen.T @ cen / n).float() if self.covariance == "full" else (cen.pow(2).sum(0) / n).float()

    def shift_means(self, before: Tensor, after: Tensor) -> None:
        """Semantic drift compensation (Yu et al. 2020): move each stored mean by the
        proximity-weighted average displacement ``after - before`` of current-data features."""
        if not self.means:
            return
        mus = torch.stack(list(self.means.values())).to(before)
        d2 = torch.cdist(mus, before).pow(2)  # (C, N)
        w = torch.softmax(-d2 / d2.mean(1, keepdim=True).clamp_min(1e-12), dim=1)
        shifted = mus + w @ (after - before)
        for c, m in zip(self.means, shifted, strict=True):
            self.means[c] = m.to(self.means[c])

    def sample(self, n_per_class: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """``n_per_class`` pseudo-features per class from N(mean, cov + shrink * mean(diag) I)."""
        xs, ys = [], []
        for c, mu in self.means.items():
            cov = self.covs[c]
            diag = cov.diagonal() if cov.dim() == 2 else cov
            eps = self.shrink * diag.mean().clamp_min(1e-8)
            z = torch.randn(n_per_class, len(mu), generator=generator).to(mu)
            if cov.dim() == 2:
                chol = torch.linalg.cholesky(
                    cov.double() + eps * torch.eye(len(mu), dtype=torch.double, device=mu.device)
                )
                xs.append(mu + z @ chol.float().T)
            else:
                xs.append(mu + z * (cov + eps).sqrt())
            ys.append(torch.full((n_per_class,), c, dtype=torch.long))
        return torch.cat(xs), torch.cat(ys).to(xs[0].device)

    def floats_per_class(self) -> int:
        d = len(next(iter(self.means.values()))) if self.means else 0
        return d + (d * (d + 1) // 2 if self.covariance == "full" else d)

    def state(self) -> dict:
        return {"means": dict(self.means), "covs": dict(self.covs)}

    def load(self, state: dict) -> None:
        self.means, self.covs = dict(state.get("means", {})), dict(state.get("covs", {}))


def refine_head(
    head: nn.Linear,
    stats: ClassGaussians,
    *,
    n_per_class: int = 256,
    epochs: int = 10,
    lr: float = 1e-3,
    batch_size: int = 128,
    generator: torch.Generator,
) -> float:
    """Decision-boundary refinement: retrain ``head`` with cross-entropy over all classes in
    ``stats`` on features sampled from their Gaussians (class-balanced, so new classes no longer
    dominate). Returns the last epoch's training accuracy."""
    x, y = stats.sample(n_per_class, generator)
    x, y = x.to(head.weight.device), y.to(head.weight.device)
    mask = torch.zeros(head.out_features, dtype=torch.bool, device=x.device)
    mask[torch.unique(y)] = True
    opt = torch.optim.Adam(head.parameters(), lr=lr)
    acc = 0.0
    for _ in range(epochs):
        correct = 0
        for idx in torch.randperm(len(y), generator=generator).split(batch_size):
            idx = idx.to(x.device)
            with torch.enable_grad():
                out = head(x[idx]).masked_fill(~mask, -1e4)
                loss = F.cross_entropy(out, y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            correct += int((out.argmax(1) == y[idx]).sum())
        acc = correct / len(y)
    return acc
