"""Memory Aware Synapses (Aljundi et al. 2018): importance = sensitivity of the output's squared l2 norm."""

from __future__ import annotations

import torch

from clframe.errors import ConfigError
from clframe.registry import register_strategy
from clframe.strategies.losses import weight_snapshot, weighted_drift
from clframe.strategy import Strategy


def output_sensitivity(strategy, data, n_samples: int | None, generator, batch_size: int = 64) -> dict:
    """``mean_x |d ||f(x)||_2^2 / d theta|`` over ``n_samples`` random samples of ``data`` (all if ``None``),
    from exact per-sample gradients (``torch.func.vmap``); ``f(x)`` = the logits of the classes allowed for ``x``
    (its task's classes in task-IL, the seen classes otherwise), in eval mode."""
    from torch.func import functional_call, grad, vmap

    params = {k: p.detach() for k, p in strategy.named_parameters() if p.requires_grad}
    device = next(iter(params.values())).device
    idx = torch.randperm(len(data), generator=generator)[:n_samples]

    def sq_norm(p, x, mask):  # masked logits are constants (MASK_VALUE): zeroing them leaves the gradient
        return (functional_call(strategy, p, (x[None],)) * mask).pow(2).sum()

    per_sample = vmap(grad(sq_norm), in_dims=(None, 0, 0))
    omega = {k: torch.zeros_like(p) for k, p in params.items()}
    was_training = strategy.training
    strategy.eval()
    for b in idx.split(batch_size):
        task = data.task[b].to(device)
        mask = strategy.class_mask(task).expand(len(b), -1).float()
        for k, g in per_sample(params, data.x[b].to(device), mask).items():
            omega[k] += g.abs().sum(0)
    strategy.train(was_training)
    return {k: o / len(idx) for k, o in omega.items()}


@register_strategy("mas")
class MAS(Strategy):
    """Penalty ``lam * sum_k Omega_k (theta_k - theta*_k)^2`` toward the weights after the last experience;
    ``Omega`` (:func:`output_sensitivity` on the experience's training data) is summed over experiences,
    as in the paper (Avalanche's plugin instead keeps ``alpha Omega + (1 - alpha) Omega_t`` and takes
    ``|grad|`` of batch means, not per-sample). Deviation: ``samples`` random samples (``null``: all)."""

    derived_state = {
        "anchor": "refreshed: the unlearned weights (the old anchor was trained on the forgotten samples and"
        " would pull the model back to them)",
        "omega": "kept: the importance of earlier experiences was computed on the forgotten samples",
    }

    def __init__(self, *args, lam: float = 1.0, samples: int | None = 1000, **kwargs):
        super().__init__(*args, **kwargs)
        if lam < 0:
            raise ConfigError("strategy.lam", lam, "a non-negative number")
        if samples is not None and samples <= 0:
            raise ConfigError("strategy.samples", samples, "a positive integer or null (all)")
        self.lam, self.samples = lam, samples
        self.omega: dict[str, torch.Tensor] = {}
        self.anchor: dict[str, torch.Tensor] = {}

    def training_loss(self, batch):
        loss = super().training_loss(batch)
        if self.omega:
            loss = loss + self.lam * weighted_drift(self, self.omega, self.anchor)
        return loss

    def after_experience(self, exp):
        new = output_sensitivity(self, exp.train, self.samples, torch.Generator().manual_seed(self.seed))
        self.omega = {k: self.omega[k] + o if k in self.omega else o for k, o in new.items()}
        self.anchor = weight_snapshot(self, self.omega)

    def after_forget(self, exp):
        self.anchor = weight_snapshot(self, self.omega)

    def on_fit_start(self):
        self.omega = {k: v.to(self.device) for k, v in self.omega.items()}
        self.anchor = {k: v.to(self.device) for k, v in self.anchor.items()}

    def state_for_checkpoint(self):
        return {"omega": self.omega, "anchor": self.anchor}

    def load_checkpoint_state(self, state):
        self.omega, self.anchor = dict(state.get("omega", {})), dict(state.get("anchor", {}))
