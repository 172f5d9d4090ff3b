"""ER-ACE (Caccia et al. 2022, "New insights on reducing abrupt representation change in online CL")."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from clframe.registry import register_strategy
from clframe.strategies.buffers import OnlineMemory, replay_batch
from clframe.strategy import MASK_VALUE, Strategy


@register_strategy("er_ace")
class ERACE(Strategy):
    """Asymmetric cross-entropy: once earlier experiences exist, the incoming batch's loss sees only
    the logits of the classes *present in that batch* (new data does not push old classes down);
    the memory batch gets the usual cross-entropy over all seen classes. The same online reservoir
    memory as ER (:class:`OnlineMemory`, composed, not inherited); like Mammoth's ``er_ace``, no replay
    (and no masking) during the first experience."""

    def __init__(self, *args, buffer_size: int = 200, minibatch_size: int | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.memory = self.register_store(
            "memory", OnlineMemory(buffer_size, replay_batch("minibatch_size", minibatch_size, self.batch_size))
        )
        self.replay_on = False

    def train_dataloader_for(self, exp):
        return self.memory.loader(exp, self.batch_size, self.seed)

    def before_experience(self, exp):
        self.replay_on = bool(self.seen.any())  # was anything learned before this experience?
        super().before_experience(exp)

    def training_loss(self, batch):
        y, allowed = batch["y"], self.class_mask(batch["task"])
        if self.replay_on:
            present = torch.zeros_like(self.seen)
            present[y] = True
            allowed = allowed & present
        logits = self.logits(self.memory.augment(batch["x"]))
        loss = F.cross_entropy(logits.masked_fill(~allowed, MASK_VALUE), y)
        if self.replay_on and "replay" in batch:
            mem = batch["replay"]
            loss = loss + F.cross_entropy(self(self.memory.augment(mem["x"]), mem["task"]), mem["y"])
        self.memory.remember(batch)
        return loss
