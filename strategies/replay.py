"""Experience replay with a fixed-size memory (reservoir or class-balanced)."""

from __future__ import annotations

import torch

from clframe.registry import register_strategy
from clframe.strategies.buffers import ReplayBuffer, ReplayLoader, replay_batch
from clframe.strategy import Capabilities, Strategy


@register_strategy("replay")
class Replay(Strategy):
    """Each training batch is concatenated with a batch drawn from memory; the memory is
    updated with the experience's data after training (``buffer_size`` samples in total)."""

    capabilities = Capabilities(language_model=True)

    def __init__(
        self,
        *args,
        buffer_size: int = 200,
        buffer_policy: str = "class_balanced",
        replay_batch_size: int | None = None,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.buffer = self.register_store("buffer", ReplayBuffer(buffer_size, buffer_policy))
        self.replay_batch_size = replay_batch("replay_batch_size", replay_batch_size, self.batch_size)

    def train_dataloader_for(self, exp):
        return ReplayLoader(super().train_dataloader_for(exp), self.buffer, self.replay_batch_size, self.seed)

    def training_loss(self, batch):
        x, y, task = batch["x"], batch["y"], batch["task"]
        if "replay" in batch:
            mem = batch["replay"]
            x, y, task = torch.cat([x, mem["x"]]), torch.cat([y, mem["y"]]), torch.cat([task, mem["task"]])
        return super().training_loss({"x": x, "y": y, "task": task})  # cross-entropy, or a language model's NLL

    def after_experience(self, exp):
        self.buffer.add(exp.train, torch.Generator().manual_seed(self.seed))
