"""CoReS: Compatible Representations via Stationarity (Biondi et al., TPAMI 2023)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from clframe.registry import register_strategy
from clframe.strategies.buffers import ReplayBuffer, ReplayLoader, replay_batch
from clframe.strategies.simplex import SimplexHead
from clframe.strategy import Strategy


@register_strategy("cores")
class CoReS(Strategy):
    """Each upgrade fine-tunes the previous model with cross-entropy against a fixed d-Simplex
    classifier pre-allocated for all ``n_classes``: the class prototypes never move, so features
    of old and new models stay comparable, with no old-to-new mapping and no pairwise training
    against the old model. Optional replay memory (``buffer_size > 0``) as in the CL2R comparisons."""

    def __init__(
        self,
        *args,
        buffer_size: int = 200,
        buffer_policy: str = "class_balanced",
        replay_batch_size: int | None = None,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.head = SimplexHead(self.backbone.num_features, self.n_classes)
        self.buffer = self.register_store("buffer", ReplayBuffer(buffer_size, buffer_policy)) if buffer_size else None
        self.replay_batch_size = replay_batch("replay_batch_size", replay_batch_size, self.batch_size)

    def features(self, x):
        return self.head.embed(self.backbone.forward_features(x))

    def train_dataloader_for(self, exp):
        loader = super().train_dataloader_for(exp)
        return loader if self.buffer is None else ReplayLoader(loader, self.buffer, self.replay_batch_size, self.seed)

    def training_loss(self, batch):
        x, y = batch["x"], batch["y"]
        if "replay" in batch:
            x, y = torch.cat([x, batch["replay"]["x"]]), torch.cat([y, batch["replay"]["y"]])
        return F.cross_entropy(self.logits(x), y)  # all prototypes, future ones included, are negatives

    def after_experience(self, exp):
        if self.buffer is not None:
            self.buffer.add(exp.train, torch.Generator().manual_seed(self.seed))
