"""Elastic Weight Consolidation (Kirkpatrick et al. 2017) and its online variant (Schwarz et al. 2018)."""

from __future__ import annotations

import torch

from clframe.registry import register_strategy
from clframe.strategies.losses import fisher_diagonal, merge_quadratics, weight_snapshot, weighted_drift
from clframe.strategy import Strategy


@register_strategy("ewc")
class EWC(Strategy):
    """Quadratic penalty ``lam/2 * sum_t sum_i F_t,i (theta_i - theta*_t,i)^2`` keeping parameters
    that mattered for earlier experiences (diagonal Fisher ``F_t``) near their values ``theta*_t``.
    ``online=True`` keeps one running Fisher ``F = gamma F + F_t`` anchored at the latest parameters.

    The sum over experiences is kept as one quadratic ``A (theta - mu)^2 + C`` (``A = sum F_t``,
    ``mu = sum F_t theta*_t / A``, constant ``offset = C``; :func:`merge_quadratics`): the same gradient
    and loss value, but a step and a checkpoint cost the same after 1 or 1,000 experiences."""

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
        self.anchors: list[tuple[dict, dict]] = []  # at most one (Fisher, anchor) pair: the summed quadratic
        self.offset = 0.0  # C: the summed penalties' value at their joint minimum (0 if online)

    def penalty(self):
        if not self.anchors:
            return 0.0
        fisher, theta = self.anchors[0]
        return 0.5 * self.lam * (weighted_drift(self, fisher, theta) + self.offset)

    def training_loss(self, batch):
        return super().training_loss(batch) + self.penalty()

    def after_experience(self, exp):
        fisher = fisher_diagonal(self, exp.train, self.fisher_samples, torch.Generator().manual_seed(self.seed))
        self.add_anchor(fisher, weight_snapshot(self, fisher))

    def add_anchor(self, fisher: dict, theta: dict) -> None:
        """Add ``F (theta - anchor)^2`` to the penalty (online: decay the old Fisher, re-anchor at ``theta``)."""
        if not self.anchors:
            self.anchors = [(fisher, theta)]
        elif self.online:
            old = self.anchors[0][0]
            self.anchors = [({k: self.gamma * old[k] + f for k, f in fisher.items()}, theta)]
        else:
            old_fisher, old_theta = self.anchors[0]
            summed, mean, c = merge_quadratics(old_fisher, old_theta, fisher, theta)
            self.anchors, self.offset = [(summed, mean)], self.offset + c

    def after_forget(self, exp):
        # every old anchor moves to the unlearned weights: sum_t F_t (theta - theta_u)^2 = A (theta - theta_u)^2
        self.anchors = [(fisher, weight_snapshot(self, fisher)) for fisher, _ in self.anchors]
        self.offset = 0.0

    def on_fit_start(self):
        self.anchors = [tuple({k: v.to(self.device) for k, v in d.items()} for d in pair) for pair in self.anchors]

    def state_for_checkpoint(self):
        return {"anchors": [{"fisher": f, "theta": t} for f, t in self.anchors], "offset": self.offset}

    def load_checkpoint_state(self, state):
        """Restore the summed quadratic (a checkpoint from before it held one pair per experience: summed here)."""
        self.anchors, self.offset = [], 0.0
        for a in state.get("anchors", []):
            self.add_anchor(a["fisher"], a["theta"])
        self.offset += float(state.get("offset", 0.0))
