"""Experience Replay (Chaudhry et al. 2019, "On tiny episodic memories in continual learning")."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from clframe.registry import register_strategy
from clframe.strategies.buffers import OnlineMemory, replay_batch
from clframe.strategy import Strategy


@register_strategy("er")
class ER(Strategy):
    """Every incoming batch is joined by ``minibatch_size`` samples from a reservoir memory of
    ``buffer_size`` samples, which is offered each incoming batch right away (online reservoir
    update, as Mammoth's ``er``; the ``replay`` strategy instead fills its memory after each experience)."""

    def __init__(self, *args, buffer_size: int = 200, minibatch_size: int | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.memory = self.register_store(
            "memory", OnlineMemory(buffer_size, replay_batch("minibatch_size", minibatch_size, self.batch_size))
        )

    def train_dataloader_for(self, exp):
        return self.memory.loader(exp, self.batch_size, self.seed)

    def training_loss(self, batch):
        x, y, task = batch["x"], batch["y"], batch["task"]
        if "replay" in batch:
            mem = batch["replay"]
            x, y, task = torch.cat([x, mem["x"]]), torch.cat([y, mem["y"]]), torch.cat([task, mem["task"]])
        loss = F.cross_entropy(self(self.memory.augment(x), task), y)
        self.memory.remember(batch)
        return loss
