"""L2 penalty toward the previous model — also the README's example of writing a strategy."""

import torch

from clframe.registry import register_strategy
from clframe.strategy import Strategy


@register_strategy("l2")
class L2Anchor(Strategy):
    """Cross-entropy plus ``lam/2 * ||theta - theta_prev||^2`` (theta_prev: weights after the last experience)."""

    derived_state = {
        "anchor": "refreshed: the unlearned weights (the old anchor was trained on the forgotten samples and"
        " would pull the model back to them)"
    }

    def __init__(self, *args, lam: float = 1.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.lam = lam
        self.anchor: dict[str, torch.Tensor] = {}

    def training_loss(self, batch):
        loss = super().training_loss(batch)
        if self.anchor:
            drift = sum(((p - self.anchor[k].to(p.device)) ** 2).sum() for k, p in self.named_parameters())
            loss = loss + self.lam / 2 * drift
        return loss

    def after_experience(self, exp):
        self.anchor = {k: p.detach().clone() for k, p in self.named_parameters()}

    after_forget = after_experience  # re-anchor at the unlearned weights (see derived_state)

    def state_for_checkpoint(self):  # resume needs the anchor
        return {"anchor": self.anchor}

    def load_checkpoint_state(self, state):
        self.anchor = state["anchor"]
