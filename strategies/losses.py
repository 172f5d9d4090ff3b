"""Loss pieces and helpers shared by strategies (distillation, frozen snapshots, weight anchors and
importance-weighted drift, Fisher)."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def distillation(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 2.0) -> Tensor:
    """Hinton et al. knowledge distillation: ``T^2 * KL(softmax(t/T) || softmax(s/T))``, batch mean."""
    t = temperature
    log_p_student = F.log_softmax(student_logits / t, dim=1)
    p_teacher = F.softmax(teacher_logits / t, dim=1)
    return F.kl_div(log_p_student, p_teacher, reduction="batchmean") * t * t


def frozen_copy(strategy) -> nn.Sequential:
    """A frozen, eval-mode snapshot ``backbone -> head`` of a strategy's network (raw logits)."""
    net = nn.Sequential(copy.deepcopy(strategy.backbone), copy.deepcopy(strategy.head))
    for p in net.parameters():
        p.requires_grad_(False)
    return net.eval()


def weight_snapshot(module: nn.Module, keys=None) -> dict[str, Tensor]:
    """Detached copies of ``module``'s parameters (only those named in ``keys``, if given): a penalty's anchor."""
    return {k: p.detach().clone() for k, p in module.named_parameters() if keys is None or k in keys}


def weighted_drift(module: nn.Module, importance: dict[str, Tensor], anchor: dict[str, Tensor]) -> Tensor:
    """``sum_k importance_k * (theta_k - anchor_k)^2`` over the parameters in ``importance`` (EWC, SI, MAS)."""
    params = dict(module.named_parameters())
    return sum((w * (params[k] - anchor[k]).pow(2)).sum() for k, w in importance.items())


def merge_quadratics(
    w_a: dict[str, Tensor], a: dict[str, Tensor], w_b: dict[str, Tensor], b: dict[str, Tensor]
) -> tuple[dict[str, Tensor], dict[str, Tensor], float]:
    """One quadratic for two: ``w_a (theta - a)^2 + w_b (theta - b)^2 = w (theta - m)^2 + c`` elementwise,
    with ``w = w_a + w_b``, ``m = (w_a a + w_b b) / w`` (``b`` where ``w = 0``) and the constant
    ``c = sum w_a w_b / w (a - b)^2``. Same gradient, one term: penalties summed over experiences
    cost one :func:`weighted_drift` and one stored pair however many experiences they cover."""
    w, m, c = dict(w_a), dict(a), 0.0  # a parameter in one quadratic only keeps its term
    for k, wb in w_b.items():
        if k not in w_a:
            w[k], m[k] = wb, b[k]
            continue
        wk = w_a[k] + wb
        nonzero = wk > 0
        safe = torch.where(nonzero, wk, torch.ones_like(wk))
        w[k], m[k] = wk, torch.where(nonzero, (w_a[k] * a[k] + wb * b[k]) / safe, b[k])
        c += float((w_a[k].double() * wb.double() / safe.double() * (a[k].double() - b[k].double()).pow(2)).sum())
    return w, m, c


def fisher_diagonal(
    strategy, data, n_samples: int | None, generator: torch.Generator, batch_size: int = 256
) -> dict[str, Tensor]:
    """Diagonal Fisher information of the trainable parameters, from exact per-sample gradients
    (``torch.func.vmap``) of the log-likelihood of the model's own predicted label, averaged over
    ``n_samples`` random samples of ``data`` (all if ``None``)."""
    from torch.func import functional_call, grad, vmap

    params = {k: p.detach() for k, p in strategy.named_parameters() if p.requires_grad}
    device = next(iter(params.values())).device
    idx = torch.randperm(len(data), generator=generator)
    idx = idx[:n_samples] if n_samples else idx

    def nll(p, x, task):
        logits = functional_call(strategy, p, (x[None], task[None]))
        return F.cross_entropy(logits, logits.argmax(1).detach())

    per_sample = vmap(grad(nll), in_dims=(None, 0, 0))
    fisher = {k: torch.zeros_like(p) for k, p in params.items()}
    was_training = strategy.training
    strategy.eval()
    for start in range(0, len(idx), batch_size):
        b = idx[start : start + batch_size]
        grads = per_sample(params, data.x[b].to(device), data.task[b].to(device))
        for k, g in grads.items():
            fisher[k] += g.pow(2).sum(0)
    strategy.train(was_training)
    return {k: f / len(idx) for k, f in fisher.items()}
