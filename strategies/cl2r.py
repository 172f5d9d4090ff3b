"""CL2R: Compatible Lifelong Learning Representations (Biondi et al., ACM TOMM 2023)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from clframe.registry import register_strategy
from clframe.strategies.buffers import ReplayBuffer, ReplayLoader, replay_batch
from clframe.strategies.losses import frozen_copy
from clframe.strategies.simplex import SimplexHead
from clframe.strategy import Strategy


@register_strategy("cl2r")
class CL2R(Strategy):
    """Replay memory + global stationarity (fixed d-Simplex classifier over all classes) + local
    stationarity: on memory samples, the new features are pulled towards the previous model's
    (cosine feature distillation, weight ``fd_weight``; with ``adaptive_weight`` scaled by
    ``sqrt(new classes / old classes)`` as in the authors' code)."""

    derived_state = {"old_net": "replaced at the next learn experience by a copy of the unlearned model"}

    def __init__(
        self,
        *args,
        buffer_size: int = 200,
        buffer_policy: str = "class_balanced",
        replay_batch_size: int | None = None,
        fd_weight: float = 5.0,
        adaptive_weight: bool = True,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.head = SimplexHead(self.backbone.num_features, self.n_classes)
        self.buffer = self.register_store("buffer", ReplayBuffer(buffer_size, buffer_policy))
        self.replay_batch_size = replay_batch("replay_batch_size", replay_batch_size, self.batch_size)
        self.fd_weight, self.adaptive_weight = fd_weight, adaptive_weight
        self.old_net, self.weight = None, fd_weight

    def features(self, x):
        return self.head.embed(self.backbone.forward_features(x))

    def before_experience(self, exp):
        n_old = int(self.seen.sum())
        if n_old:
            self.old_net = frozen_copy(self)
            n_new = len(set(exp.classes) - set(self.seen.nonzero().squeeze(1).tolist()))
            self.weight = self.fd_weight * ((max(n_new, 1) / n_old) ** 0.5 if self.adaptive_weight else 1.0)
        super().before_experience(exp)

    def train_dataloader_for(self, exp):
        return ReplayLoader(super().train_dataloader_for(exp), self.buffer, self.replay_batch_size, self.seed)

    def training_loss(self, batch):
        x, y = batch["x"], batch["y"]
        if "replay" not in batch:
            return F.cross_entropy(self.logits(x), y)
        mem = batch["replay"]["x"]
        feats = self.features(torch.cat([x, mem]))
        loss = F.cross_entropy(self.head(feats), torch.cat([y, batch["replay"]["y"]]))
        if self.old_net is not None:
            with torch.no_grad():
                old = self.old_net[1].embed(self.old_net[0].eval().forward_features(mem))
            new = feats[len(x) :]
            loss = loss + self.weight * (1 - F.cosine_similarity(new, old, dim=1)).mean()
        return loss

    def after_experience(self, exp):
        self.buffer.add(exp.train, torch.Generator().manual_seed(self.seed))

    def state_for_checkpoint(self):
        return {"has_old": self.old_net is not None, "weight": self.weight}

    def load_checkpoint_state(self, state):
        self.weight = state.get("weight", self.fd_weight)
        if state.get("has_old"):
            self.old_net = frozen_copy(self)  # weights come from the state dict
