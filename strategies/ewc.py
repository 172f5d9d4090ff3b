"""Elastic Weight Consolidation (Kirkpatrick et al. 2017) and its online variant (Schwarz et al. 2018)."""

from __future__ import annotations

import torch

from clframe.registry import register_strategy
from clframe.strategies.losses import fisher_diagonal, weight_snapshot, weighted_drift
from clframe.strategy import Strategy


@register_strategy("ewc")
class EWC(Strategy):
    """Quadratic penalty ``lam/2 * sum_t sum_i F_t,i (theta_i - theta*_t,i)^2`` keeping parameters
    that mattered for earlier experiences (diagonal Fisher ``F_t``) near their values ``theta*_t``.
    ``online=True`` keeps one running Fisher ``F = gamma F + F_t`` anchored at the latest parameters."""

    derived_state = {
        "anchors": "anchor weights refreshed: the unlearned weights (the old anchors were trained on the forgotten"
        " samples and would pull the model back to them); the Fisher information of earlier experiences is kept"
    }

    def __init__(
        self,
        *args,
        lam: float = 100.0,
        fisher_samples: int | None = 1000,
        online: bool = False,
        gamma: float = 1.0,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.lam, self.fisher_samples, self.online, self.gamma = lam, fisher_samples, online, gamma
        self.anchors: list[tuple[dict, dict]] = []  # (fisher, parameters) per experience (one if online)

    def penalty(self):
        total = 0.0
        for fisher, theta in self.anchors:
            total = total + weighted_drift(self, fisher, theta)
        return 0.5 * self.lam * total

    def training_loss(self, batch):
        return super().training_loss(batch) + self.penalty()

    def after_experience(self, exp):
        fisher = fisher_diagonal(self, exp.train, self.fisher_samples, torch.Generator().manual_seed(self.seed))
        theta = weight_snapshot(self, fisher)
        if self.online and self.anchors:
            old = self.anchors[0][0]
            fisher = {k: self.gamma * old[k] + f for k, f in fisher.items()}
            self.anchors = []
        self.anchors.append((fisher, theta))

    def after_forget(self, exp):
        self.anchors = [(fisher, weight_snapshot(self, fisher)) for fisher, _ in self.anchors]

    def on_fit_start(self):
        self.anchors = [tuple({k: v.to(self.device) for k, v in d.items()} for d in pair) for pair in self.anchors]

    def state_for_checkpoint(self):
        return {"anchors": [{"fisher": f, "theta": t} for f, t in self.anchors]}

    def load_checkpoint_state(self, state):
        self.anchors = [(a["fisher"], a["theta"]) for a in state.get("anchors", [])]
