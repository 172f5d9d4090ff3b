"""Pieces shared by the unlearning methods and the unlearning evaluator: loss functions (NPO,
SimNPO, MMD), layer-activation capture and batch helpers."""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clframe.errors import ConfigError
from clframe.stream import TensorData

ACTIVATIONS = (nn.ReLU, nn.GELU, nn.SiLU, nn.Tanh, nn.LeakyReLU, nn.ELU)


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


# ---------------------------------------------------------------- representation helpers
def activation_layers(module: nn.Module) -> list[str]:
    """Names of the activation modules (ReLU, GELU, ...) in ``module``: the layers used for CKA and RepNoise."""
    return [name for name, m in module.named_modules() if isinstance(m, ACTIVATIONS)]


@contextmanager
def capture(module: nn.Module, names: list[str]):
    """Record the outputs of the named sub-modules (flattened per sample) during the forward passes inside."""
    acts: dict[str, Tensor] = {}
    mods = dict(module.named_modules())
    missing = [n for n in names if n not in mods]
    if missing:
        raise ConfigError("layers", missing, sorted(n for n in mods if n))
    hooks = [mods[n].register_forward_hook(lambda _m, _i, out, n=n: acts.__setitem__(n, out.flatten(1))) for n in names]
    try:
        yield acts
    finally:
        for h in hooks:
            h.remove()


@contextmanager
def capture_io(module: nn.Module, names: list[str]):
    """Record ``(input, output)`` of the named sub-modules, unflattened, during the forward passes inside:
    ``acts[name]`` is a list with one pair per call (a strategy may call a layer more than once per
    forward, e.g. once per task group). The input is cloned before the module runs, so an in-place
    activation cannot overwrite it; both keep their autograd graph."""
    acts: dict[str, list[tuple[Tensor, Tensor]]] = {n: [] for n in names}
    pending: dict[str, Tensor] = {}
    mods = dict(module.named_modules())
    missing = [n for n in names if n not in mods]
    if missing:
        raise ConfigError("layers", missing, sorted(n for n in mods if n))

    def pre(name):
        return lambda _m, inp: pending.__setitem__(name, inp[0].clone())

    def post(name):
        return lambda _m, _i, out: acts[name].append((pending.pop(name), out))

    hooks = [mods[n].register_forward_pre_hook(pre(n)) for n in names]
    hooks += [mods[n].register_forward_hook(post(n)) for n in names]
    try:
        yield acts
    finally:
        for h in hooks:
            h.remove()


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
    x, y, t = data.x[:n].to(dev), data.y[:n].to(dev), data.task[:n].to(dev)
    acc = float((strategy(x, t).argmax(1) == y).float().mean())
    strategy.train(was)
    return acc


def split_test(exp) -> tuple[TensorData, TensorData | None]:
    """A forget event's test data split into (classes still retained, classes this request removed
    entirely). Classes with no retain sample left (forgotten now or earlier) leave the first part."""
    retained = torch.tensor(
        exp.retain.classes() if exp.retain is not None and len(exp.retain) else [], dtype=torch.long
    )
    gone_now = torch.tensor([c for c in exp.forget.classes() if c not in retained.tolist()], dtype=torch.long)
    keep = exp.test.subset(torch.isin(exp.test.y, retained))
    now = exp.test.subset(torch.isin(exp.test.y, gone_now))
    return keep, (now if len(now) else None)
