"""Learning without Forgetting (Li & Hoiem 2017)."""

from __future__ import annotations

import torch

from clframe.registry import register_strategy
from clframe.strategies.losses import distillation, frozen_copy
from clframe.strategy import Strategy


@register_strategy("lwf")
class LwF(Strategy):
    """Cross-entropy on the new data plus ``alpha`` x distillation of the previous model's outputs
    on the same inputs, over the classes of earlier experiences (one softmax per earlier task in
    task-IL, one over all earlier classes otherwise)."""

    derived_state = {"old_net": "replaced at the next learn experience by a copy of the unlearned model"}

    def __init__(self, *args, alpha: float = 1.0, temperature: float = 2.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.alpha, self.temperature = alpha, temperature
        self.old_net = None
        self.register_buffer("old_groups", torch.zeros(0, self.n_classes, dtype=torch.bool))

    def before_experience(self, exp):
        if bool(self.seen.any()):  # something was learned before: snapshot it and its class groups
            self.old_net = frozen_copy(self)
            if self.setting == "task":
                self.old_groups = self.task_classes.clone()
            else:
                self.old_groups = (self.seen if self.setting == "class" else torch.ones_like(self.seen))[None].clone()
        super().before_experience(exp)

    def training_loss(self, batch):
        loss = super().training_loss(batch)
        if self.old_net is None:
            return loss
        x = batch["x"]
        with torch.no_grad():
            old = self.old_net.eval()(x)
        new = self.logits(x)
        kd = sum(distillation(new[:, g], old[:, g], self.temperature) for g in self.old_groups if g.any())
        return loss + self.alpha * kd

    def state_for_checkpoint(self):
        return {"has_old": self.old_net is not None}

    def load_checkpoint_state(self, state):
        if state.get("has_old"):
            self.old_net = frozen_copy(self)  # weights come from the state dict
