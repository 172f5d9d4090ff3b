"""Pieces of the unlearning methods: loss functions (NPO, SimNPO, MMD) and batch helpers (layer-activation
capture is in :mod:`clframe.introspect`, the forget event's test split in :mod:`clframe.stream`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from clframe.stream import TensorData


# ---------------------------------------------------------------- loss pieces (plain functions)
def true_logprob(logits: Tensor, y: Tensor) -> Tensor:
    """log π(y|x): log-probability of the true label, per sample."""
    return logits.log_softmax(1).gather(1, y[:, None]).squeeze(1)


def npo_loss(logp: Tensor, logp_ref: Tensor, beta: float) -> Tensor:
    """NPO (Zhang et al. 2024): (2/β)·log(1 + (π_θ/π_ref)^β) = -(2/β)·log σ(-β·(log π_θ - log π_ref))."""
    return -(2.0 / beta) * F.logsigmoid(-beta * (logp - logp_ref)).mean()


def simnpo_loss(logp: Tensor, beta: float, gamma: float, length: float = 1.0) -> Tensor:
    """SimNPO (Fan et al. 2024): -(2/β)·log σ(-(β/|y|)·log π_θ(y|x) - γ); reference-free,
    length-normalised (|y| = 1 for a class label), margin γ."""
    return -(2.0 / beta) * F.logsigmoid(-(beta / length) * logp - gamma).mean()


def gaussian_mmd(x: Tensor, y: Tensor, bandwidths: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0)) -> Tensor:
    """Squared MMD with a sum of Gaussian kernels; distances are divided by the dimension so that the
    bandwidths mean the same at every layer width."""
    z = torch.cat([x, y])
    d2 = torch.cdist(z, z).pow(2) / z.shape[1]
    k = sum(torch.exp(-d2 / (2 * b * b)) for b in bandwidths)
    n = len(x)
    return k[:n, :n].mean() + k[n:, n:].mean() - 2 * k[:n, n:].mean()


def repnoise_mmd(x: Tensor, y: Tensor, kernel_mul: float = 2.0, kernel_num: int = 5, eps: float = 1e-12) -> Tensor:
    """Squared MMD (biased V-statistic) with the kernel of the RepNoise authors' code (Rosati et al. 2024,
    ``representation_noising/loss.py``, ``MMD_loss``): a sum of ``kernel_num`` Gaussian kernels
    ``exp(-||a - b||^2 / s_i)`` on raw squared Euclidean distances (no division by the dimension), whose
    bandwidths ``s_i = s * kernel_mul**(i - kernel_num // 2)`` are centred on ``s`` = the mean squared
    distance over all distinct pairs of the pooled sample ``[x; y]``, taken without gradient (the
    authors read ``.data``). ``mean(K_xx) + mean(K_yy) - 2 mean(K_xy)``; for ``len(x) == len(y)``
    this equals the authors' ``mean(XX + YY - XY - YX)``. ``eps`` only guards a sample of identical
    points (zero mean distance). x: (n, d), y: (m, d)."""
    z = torch.cat([x, y])
    sq = z.pow(2).sum(1)
    total = len(z)
    d2 = (sq[:, None] + sq[None, :] - 2 * z @ z.T).clamp_min(0)  # Gram form: no (n, n, d) tensor
    d2 = d2.masked_fill(torch.eye(total, dtype=torch.bool, device=z.device), 0.0)
    s = (d2.detach().sum() / max(1, total * total - total)).clamp_min(eps)
    k = sum(torch.exp(-d2 / (s * kernel_mul ** (i - kernel_num // 2))) for i in range(kernel_num))
    n = len(x)
    return k[:n, :n].mean() + k[n:, n:].mean() - 2 * k[:n, n:].mean()


# ---------------------------------------------------------------- data helpers
def batches(data: TensorData, batch_size: int, seed: int, device: torch.device):
    """Endless shuffled batches of ``data`` (dicts on ``device``)."""
    gen = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(len(data), generator=gen)
        for s in range(0, len(order), batch_size):
            idx = order[s : s + batch_size]
            yield {"x": data.x[idx].to(device), "y": data.y[idx].to(device), "task": data.task[idx].to(device)}


@torch.no_grad()
def accuracy_on(strategy, data: TensorData | None, n: int = 512) -> float | None:
    if data is None or not len(data):
        return None
    was = strategy.training
    strategy.eval()
    dev = strategy.device
    right = [
        strategy.correct(*(v[i : min(i + 128, n)].to(dev) for v in (data.x, data.y, data.task)))
        for i in range(0, min(n, len(data)), 128)
    ]
    acc = float(torch.cat(right).float().mean())
    strategy.train(was)
    return acc


@torch.no_grad()
def mean_log_likelihood_on(strategy, data: TensorData | None, n: int = 512) -> float | None:
    """Mean per-unit log-likelihood (per sample for a classifier, per answer token for a language model) of the
    first ``n`` samples of ``data``: the forget-set likelihood trajectory of path-dependence studies."""
    if data is None or not len(data):
        return None
    was = strategy.training
    strategy.eval()
    dev = strategy.device
    total, units = 0.0, 0.0
    for i in range(0, min(n, len(data)), 128):
        batch = {k: getattr(data, k)[i : min(i + 128, n)].to(dev) for k in ("x", "y", "task")}
        total += float(strategy.log_likelihood(batch).sum())
        units += float(strategy.target_length(batch).sum())
    strategy.train(was)
    return total / max(units, 1.0)
