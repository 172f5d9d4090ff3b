"""Dark Experience Replay++ (Buzzega et al. 2020, "Dark experience for general continual learning")."""

from __future__ import annotations

import torch.nn.functional as F

from clframe.registry import register_strategy
from clframe.strategies.buffers import OnlineMemory, replay_batch
from clframe.strategy import MASK_VALUE, Strategy


@register_strategy("derpp")
class DERpp(Strategy):
    """``CE(incoming) + alpha * MSE(logits(m1), stored logits(m1)) + beta * CE(m2)`` with ``m1``, ``m2``
    two memory batches of ``minibatch_size`` (Buzzega et al. 2020, Eq. 6; ``beta=0`` gives DER).

    The reservoir memory (updated online, as in ER) keeps each incoming sample with the raw logits
    over all classes the network gave it on arrival. Separate forward passes, as in Mammoth. The
    two memory batches come from one draw without replacement (disjoint once the memory holds
    ``2 * minibatch_size`` samples; Mammoth draws them independently)."""

    def __init__(
        self,
        *args,
        buffer_size: int = 200,
        minibatch_size: int | None = None,
        alpha: float = 0.1,
        beta: float = 0.5,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.memory = self.register_store(
            "memory", OnlineMemory(buffer_size, replay_batch("minibatch_size", minibatch_size, self.batch_size))
        )
        self.alpha, self.beta = alpha, beta

    def train_dataloader_for(self, exp):
        return self.memory.loader(exp, self.batch_size, self.seed, draws=2)

    def training_loss(self, batch):
        logits = self.logits(self.memory.augment(batch["x"]))
        loss = F.cross_entropy(logits.masked_fill(~self.class_mask(batch["task"]), MASK_VALUE), batch["y"])
        if "replay" in batch:
            mem, k = batch["replay"], self.memory.minibatch_size
            x = self.memory.augment(mem["x"])
            loss = loss + self.alpha * F.mse_loss(self.logits(x[:k]), mem["logits"][:k])
            loss = loss + self.beta * F.cross_entropy(self(x[-k:], mem["task"][-k:]), mem["y"][-k:])
        self.memory.remember(batch, logits=logits)
        return loss
