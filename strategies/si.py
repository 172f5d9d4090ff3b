"""Synaptic Intelligence (Zenke, Poole & Ganguli 2017): importance from the path integral of the training loss."""

from __future__ import annotations

import torch

from clframe.errors import ConfigError
from clframe.registry import register_strategy
from clframe.strategies.losses import weight_snapshot, weighted_drift
from clframe.strategy import Strategy


@register_strategy("si")
class SynapticIntelligence(Strategy):
    """Penalty ``c * sum_k Omega_k (theta_k - theta*_k)^2`` toward the weights ``theta*`` after the last
    experience. Per optimiser step, ``w_k -= g_k * dtheta_k`` (``g``: gradient seen by ``on_before_optimizer_step``,
    ``dtheta``: the step's change, read in ``on_train_batch_end``); after an experience
    ``Omega_k = max(0, Omega_k + w_k / (Delta_k^2 + xi))``, ``Delta_k`` its total change.

    As the authors' code (ganguli-lab/pathint: ``unreg_grads``, ReLU on Omega, no 1/2 in the penalty), ``g`` is
    the gradient of the loss *without* the penalty: the penalty's gradient ``2 c Omega (theta - theta*)`` is
    subtracted, scaled by the share of it the engine accumulated (``loss / accumulate_grad_batches`` per batch).
    Avalanche and van de Ven et al. use the total gradient and no ReLU; Avalanche also caps Omega at 1e-3.
    Defaults ``xi`` = 1e-3 (the paper's Split MNIST); ``c`` tuned for SGD lr 0.01 on task-IL Split-MNIST."""

    derived_state = {
        "anchor": "refreshed: the unlearned weights (the old anchor was trained on the forgotten samples and"
        " would pull the model back to them)",
        "omega": "kept: the path integrals of earlier experiences saw the forgotten samples",
    }

    def __init__(self, *args, c: float = 1.0, xi: float = 1e-3, **kwargs):
        super().__init__(*args, **kwargs)
        if c < 0:
            raise ConfigError("strategy.c", c, "a non-negative number")
        if xi <= 0:
            raise ConfigError("strategy.xi", xi, "a positive number")
        self.c, self.xi = c, xi
        self.omega: dict[str, torch.Tensor] = {}  # consolidated importance, and the anchor theta*
        self.anchor: dict[str, torch.Tensor] = {}
        self.start, self.w, self.before, self.share, self.last_loss = {}, {}, {}, 0.0, None  # this experience

    def penalty(self):
        return self.c * weighted_drift(self, self.omega, self.anchor)

    def training_loss(self, batch):
        loss = super().training_loss(batch) + (self.penalty() if self.omega else 0.0)
        self.last_loss = loss.detach()
        return loss

    def on_before_zero_grad(self, optimizer):  # a new accumulation window
        self.share = 0.0

    def on_before_backward(self, loss):  # the engine backpropagates loss / accumulate_grad_batches (0/0: no penalty)
        self.share = self.share + torch.nan_to_num(loss.detach() / self.last_loss)

    def before_experience(self, exp):
        super().before_experience(exp)
        self.start = {k: p.detach().clone() for k, p in self.named_parameters() if p.requires_grad}
        self.w = {k: torch.zeros_like(p) for k, p in self.start.items()}

    def on_fit_start(self):
        for state in (self.omega, self.anchor, self.start, self.w):
            state.update({k: v.to(self.device) for k, v in state.items()})

    @torch.no_grad()
    def on_before_optimizer_step(self, optimizer):
        params = dict(self.named_parameters())
        for k in self.w:
            if params[k].grad is not None:
                g = params[k].grad.clone()
                if k in self.omega:
                    g -= self.share * 2 * self.c * self.omega[k] * (params[k] - self.anchor[k])
                self.before[k] = (params[k].detach().clone(), g)

    @torch.no_grad()
    def on_train_batch_end(self, outputs, batch, batch_idx):
        if self.before:  # a step was taken on this batch (not only accumulated)
            params = dict(self.named_parameters())
            for k, (old, g) in self.before.items():
                self.w[k] -= g * (params[k] - old)
            self.before = {}

    @torch.no_grad()
    def after_experience(self, exp):
        params = dict(self.named_parameters())
        for k, w in self.w.items():
            step = w / ((params[k] - self.start[k]).pow(2) + self.xi)
            self.omega[k] = (self.omega[k] + step if k in self.omega else step).clamp(min=0)
            self.anchor[k] = params[k].detach().clone()

    def after_forget(self, exp):
        self.anchor = weight_snapshot(self, self.anchor)

    def state_for_checkpoint(self):  # the path integral of the current experience restarts at the next one
        return {"omega": self.omega, "anchor": self.anchor}

    def load_checkpoint_state(self, state):
        self.omega, self.anchor = dict(state.get("omega", {})), dict(state.get("anchor", {}))
