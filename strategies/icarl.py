"""iCaRL (Rebuffi et al. 2017, "iCaRL: Incremental classifier and representation learning")."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from clframe.registry import register_strategy
from clframe.stores import DataStore
from clframe.strategies.buffers import herding
from clframe.strategies.losses import frozen_copy
from clframe.strategy import MASK_VALUE, Strategy
from clframe.stream import TensorData, TensorLoader


@register_strategy("icarl")
class ICaRL(Strategy):
    """Training: the experience's data plus the exemplars, sigmoid binary cross-entropy over the
    seen classes with targets = one-hot for new classes and the previous network's sigmoid outputs
    for old classes (distillation). After each experience: ``buffer_size // n_seen_classes``
    exemplars per class chosen by herding (old classes keep the first ones of their herding order).
    Prediction (eval mode, so the runner's evaluation uses it): nearest mean of exemplars on
    L2-normalised features."""

    derived_state = {
        "class_means": "refreshed from the remaining exemplars with the unlearned model (none left: class dropped)",
        "old_net": "replaced at the next learn experience by a copy of the unlearned model",
    }

    def __init__(self, *args, buffer_size: int = 200, **kwargs):
        super().__init__(*args, **kwargs)
        self.buffer_size = buffer_size
        self.exemplars = self.register_store("exemplars", DataStore())  # per class, in herding order
        self.old_net = None
        self.register_buffer("old_seen", torch.zeros_like(self.seen))
        self.register_buffer("class_means", torch.zeros(self.n_classes, self.backbone.num_features))
        self.register_buffer("has_mean", torch.zeros_like(self.seen))

    def before_experience(self, exp):
        if bool(self.seen.any()):
            self.old_net, self.old_seen = frozen_copy(self), self.seen.clone()
        super().before_experience(exp)

    def train_dataloader_for(self, exp):
        data = TensorData.concat([exp.train, *self.exemplars.parts])
        return TensorLoader(data, self.batch_size, shuffle=True, seed=self.seed, transform=exp.transform)

    def training_loss(self, batch):
        x = batch["x"]
        allowed = self.class_mask(batch["task"]).expand(len(x), -1)
        logits = self.logits(x)
        targets = F.one_hot(batch["y"], self.n_classes).float()
        if self.old_net is not None:
            with torch.no_grad():
                targets = torch.where(self.old_seen, torch.sigmoid(self.old_net.eval()(x)), targets)
        bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
        return (bce * allowed).sum() / allowed.sum()

    @torch.no_grad()
    def embed(self, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
        """L2-normalised features in eval mode, batched on the model's device."""
        was = self.training
        self.eval()
        out = torch.cat(
            [
                F.normalize(self.features(x[i : i + batch_size].to(self.device)), dim=1)
                for i in range(0, len(x), batch_size)
            ]
        )
        self.train(was)
        return out

    def after_experience(self, exp):
        m = self.buffer_size // int(self.seen.sum())
        keep, parts = [], list(self.exemplars.parts)
        for c in exp.classes:
            data = exp.train.subset(exp.train.y == c)
            parts.append(data.subset(herding(self.embed(data.x), m)))
        pool = TensorData.concat(parts)
        for c in pool.y.unique().tolist():
            keep.append((pool.y == c).nonzero().squeeze(1)[:m])  # herding order: the first m are the best
        self.exemplars.replace(pool.subset(torch.cat(keep)))
        self.update_means()

    def update_means(self) -> None:
        """Class means of the exemplars' normalised features (a class without exemplars has none)."""
        self.has_mean.zero_()
        kept = self.exemplars.data()
        if kept is None:
            return
        feats = self.embed(kept.x)
        y = kept.y.to(feats.device)
        for c in y.unique().tolist():
            self.class_means[c] = F.normalize(feats[y == c].mean(0), dim=0)
            self.has_mean[c] = True

    def after_forget(self, exp):
        self.update_means()

    def forward(self, x, task=None):
        if self.training or not bool(self.has_mean.any()):
            return super().forward(x, task)
        scores = -torch.cdist(F.normalize(self.features(x), dim=1), self.class_means)
        return scores.masked_fill(~(self.class_mask(task) & self.has_mean), MASK_VALUE)
