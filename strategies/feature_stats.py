"""Per-class Gaussian feature statistics: a rehearsal-free memory of old classes.

Used by DESIRE (consolidation loss on class Gaussians, decision-boundary refinement, drift
calibration) and reusable by other
rehearsal-free methods that retrain a classifier on sampled pseudo-features (SLCA, FeCAM-style).
Memory per class: ``d`` floats (mean) + ``d(d+1)/2`` (full covariance) or ``d`` (diagonal).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clframe.errors import ConfigError
from clframe.fit import Engine
from clframe.optim import make_optimizer
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


def class_moments(feats: Tensor, y: Tensor, covariance: str = "full") -> tuple[dict[int, Tensor], dict[int, Tensor]]:
    """Mean and unbiased covariance (``(d, d)``, or the ``(d,)`` diagonal) of each class in ``y``
    (differentiable in ``feats``: DESIRE's consolidation loss is written on them)."""
    means, covs = {}, {}
    for c in torch.unique(y).tolist():
        f = feats[y == c]
        means[c] = f.mean(0)
        cen, n = f - means[c], max(len(f) - 1, 1)
        covs[c] = cen.T @ cen / n if covariance == "full" else cen.pow(2).sum(0) / n
    return means, covs


def drift_weights(means: Tensor, before: Tensor) -> Tensor:
    """SDC proximity weights ``(C, N)``: softmax over samples of ``-|mu_c - f_i|^2 / mean_i |mu_c - f_i|^2``."""
    d2 = torch.cdist(means, before).pow(2)
    return torch.softmax(-d2 / d2.mean(1, keepdim=True).clamp_min(1e-12), dim=1)


def gaussian_kl(mu0: Tensor, cov0: Tensor, mu1: Tensor, cov1: Tensor) -> Tensor:
    """``KL(N(mu0, cov0) || N(mu1, cov1))``; covariances ``(d, d)`` (positive definite) or diagonal ``(d,)``."""
    d, diff = len(mu0), mu1 - mu0
    if cov0.dim() == 1:
        return 0.5 * ((cov0 / cov1).sum() + (diff.pow(2) / cov1).sum() - d + cov1.log().sum() - cov0.log().sum())
    l0, l1 = torch.linalg.cholesky(cov0), torch.linalg.cholesky(cov1)
    trace = torch.linalg.solve_triangular(l1, l0, upper=False).pow(2).sum()  # tr(cov1^-1 cov0)
    maha = torch.linalg.solve_triangular(l1, diff[:, None], upper=False).pow(2).sum()
    logdet = 2 * (l1.diagonal().log().sum() - l0.diagonal().log().sum())
    return 0.5 * (trace + maha - d + logdet)


def consolidation_kl(
    feats: Tensor, y: Tensor, new_ref: ClassGaussians, before: Tensor, old: ClassGaussians, *, stability: float
) -> Tensor:
    """DESIRE's consolidation objective on Gaussian class statistics (our reconstruction, see
    docs/methods.md#desire): ``mean_{c new} KL(N_c(feats) || new_ref_c)`` (the merged model's class
    Gaussians of the current data should be the new model's) ``+ stability * mean_{c old}
    KL(N(mu_c + drift_c, S_c) || N(mu_c, S_c))`` = ``1/2 drift_c^T S_c^-1 drift_c`` (the stored old-class
    Gaussians should stay valid; ``drift_c``: SDC-weighted displacement ``feats - before`` of the current
    data). Both sides use ``new_ref``'s / ``old``'s covariance ridge. Computed in float32 with autocast off:
    covariances of bf16 features are not positive definite (``trainer.precision=bf16-mixed``)."""
    with torch.autocast(feats.device.type, enabled=False):
        return _consolidation_kl(feats.float(), y, new_ref, before.float(), old, stability=stability)


def _consolidation_kl(
    feats: Tensor, y: Tensor, new_ref: ClassGaussians, before: Tensor, old: ClassGaussians, *, stability: float
) -> Tensor:
    means, covs = class_moments(feats, y, new_ref.covariance)
    plastic = torch.stack(
        [gaussian_kl(means[c], covs[c] + new_ref.ridge(new_ref.covs[c]), *new_ref.regularised(c)) for c in means]
    ).mean()
    old_classes = [c for c in old.means if c not in means]
    if not old_classes or stability == 0:
        return plastic
    mus = torch.stack([old.means[c] for c in old_classes]).to(feats)
    drift = drift_weights(mus, before) @ (feats - before)
    stable = []
    for c, dc in zip(old_classes, drift, strict=True):
        mu, cov = (t.to(feats) for t in old.regularised(c))
        stable.append(gaussian_kl(mu + dc, cov, mu, cov))
    return plastic + stability * torch.stack(stable).mean()


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
        means, covs = class_moments(feats.double(), y, self.covariance)
        for c in means:
            self.means[c], self.covs[c] = means[c].float(), covs[c].float()

    def regularised(self, c: int) -> tuple[Tensor, Tensor]:
        """Mean and ``cov + shrink * mean(diag) I`` of class ``c`` (what sampling and the KLs use)."""
        return self.means[c], self.covs[c] + self.ridge(self.covs[c])

    def ridge(self, cov: Tensor) -> Tensor:
        """``shrink * mean(diag(cov)) I`` (as a matrix, or a vector for a diagonal ``cov``)."""
        diag = cov.diagonal() if cov.dim() == 2 else cov
        eps = self.shrink * diag.mean().clamp_min(1e-8)
        return eps * torch.eye(len(diag), dtype=cov.dtype, device=cov.device) if cov.dim() == 2 else eps.expand_as(cov)

    def drop(self, classes) -> None:
        """Forget the statistics of ``classes`` (absent ones are ignored)."""
        for c in classes:
            self.means.pop(int(c), None)
            self.covs.pop(int(c), None)

    def shift_means(self, before: Tensor, after: Tensor) -> None:
        """Semantic drift compensation (Yu et al. 2020): move each stored mean by the
        proximity-weighted average displacement ``after - before`` of current-data features."""
        if not self.means:
            return
        mus = torch.stack(list(self.means.values())).to(before)
        shifted = mus + drift_weights(mus, before) @ (after - before)
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
    engine: Engine | None = None,
) -> float:
    """Decision-boundary refinement: retrain ``head`` with cross-entropy over all classes in
    ``stats`` on features sampled from their Gaussians (class-balanced, so new classes no longer
    dominate), with ``engine``'s optimisation loop. Returns the last epoch's training accuracy."""
    x, y = stats.sample(n_per_class, generator)
    x, y = x.to(head.weight.device, head.weight.dtype), y.to(head.weight.device)
    mask = torch.zeros(head.out_features, dtype=torch.bool, device=x.device)
    mask[torch.unique(y)] = True
    opt = make_optimizer(head.parameters(), "adam", lr=lr)
    counts = {"correct": 0}

    def batches():
        for _ in range(epochs):
            counts["correct"] = 0  # the last epoch's accuracy is reported
            yield from torch.randperm(len(y), generator=generator).split(batch_size)

    def loss_of(idx):
        idx = idx.to(x.device)
        out = head(x[idx]).masked_fill(~mask, -1e4)
        counts["correct"] += int((out.argmax(1) == y[idx]).sum())
        return F.cross_entropy(out, y[idx])

    with torch.enable_grad():
        total = epochs * -(-len(y) // batch_size)
        (engine or Engine.default()).optimize(opt, batches(), loss_of, total=total, desc="head refinement")
    acc = counts["correct"] / len(y) if epochs else 0.0
    return acc
