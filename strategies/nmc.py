"""Nearest Mean Classifier on a frozen (pretrained) backbone — the simple baseline of
"A Simple Baseline that Questions the Use of Pretrained-Models in Continual Learning"."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from clframe.errors import ConfigError
from clframe.pretrain import freeze
from clframe.registry import register_strategy
from clframe.strategy import MASK_VALUE, Capabilities, Strategy

METRICS = ("euclidean", "cosine")


class RunningClassMeans:
    """Per-class feature means updated sample by sample: ``mu_c += (f - mu_c) / n_c``.

    A batch update is the closed form of feeding its samples one at a time, so the means
    do not depend on how the stream is cut into batches or experiences (task-free)."""

    def __init__(self, means: Tensor, counts: Tensor):
        self.means, self.counts = means, counts  # views of the strategy's buffers (checkpointed)

    @torch.no_grad()
    def update(self, feats: Tensor, labels: Tensor) -> None:
        feats = feats.to(self.means.dtype)
        k = torch.bincount(labels, minlength=len(self.counts)).to(self.counts.dtype)
        sums = F.one_hot(labels, len(self.counts)).to(feats.dtype).T @ feats  # BLAS; index_add_ is slow on CPU
        new = self.counts + k
        hit = k > 0
        self.means[hit] += (sums[hit] - k[hit, None] * self.means[hit]) / new[hit, None]
        self.counts.copy_(new)

    @torch.no_grad()
    def remove(self, feats: Tensor, labels: Tensor) -> None:
        """Exact inverse of :meth:`update` for folded-in samples: ``mu_c = (n_c mu_c - sum f) / (n_c - k)``."""
        feats = feats.to(self.means.dtype)
        k = torch.bincount(labels, minlength=len(self.counts)).to(self.counts.dtype)
        sums = F.one_hot(labels, len(self.counts)).to(feats.dtype).T @ feats
        left = self.counts - k
        hit = k > 0
        if bool((left[hit] < 0).any()):
            raise ValueError("removing more samples from a class mean than were added")
        total = self.means[hit] * self.counts[hit, None] - sums[hit]
        self.means[hit] = torch.where(left[hit, None] > 0, total / left[hit, None].clamp_min(1), 0.0)
        self.counts.copy_(left)


@register_strategy("nmc")
class NMC(Strategy):
    """Frozen (e.g. ``pretrain``-ed) backbone; a sample is assigned to the class with the nearest mean feature
    (``metric``: euclidean or cosine; ``normalize``: L2-normalise features first). No gradient
    steps: the runner skips ``Trainer.fit`` and the means are updated in ``after_experience``
    (or by calling :meth:`observe` on any batch, without experience boundaries).

    Forget requests are answered exactly: the backbone is frozen, so the forgotten samples' features
    are subtracted from their class means (a class with no sample left is never predicted); the result
    equals class means computed without them (the retrain oracle), up to float rounding."""

    capabilities = Capabilities(gradient_unlearning=False)
    derived_state = {"class_means": "exact: the forgotten samples' features are subtracted (frozen backbone)"}

    def __init__(self, *args, metric: str = "euclidean", normalize: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        if metric not in METRICS:
            raise ConfigError("strategy.metric", metric, METRICS)
        self.metric, self.normalize = metric, normalize
        self.head.requires_grad_(False)  # unused
        self.register_buffer("class_means", torch.zeros(self.n_classes, self.backbone.num_features))
        self.register_buffer("class_counts", torch.zeros(self.n_classes))

    def features(self, x: Tensor) -> Tensor:
        f = self.backbone.forward_features(x)
        return F.normalize(f, dim=1) if self.normalize else f

    def logits(self, x: Tensor) -> Tensor:
        f, mu = self.features(x), self.class_means
        if self.metric == "cosine":
            out = F.normalize(f, dim=1) @ F.normalize(mu, dim=1).T
        else:
            out = -torch.cdist(f, mu).pow(2)
        return out.masked_fill(self.class_counts == 0, MASK_VALUE)

    @torch.no_grad()
    def observe(self, x: Tensor, y: Tensor) -> None:
        """Task-free update: fold a batch into the class means."""
        RunningClassMeans(self.class_means, self.class_counts).update(
            self.features(x.to(self.device)), y.to(self.device)
        )

    def before_experience(self, exp) -> None:
        freeze(self.backbone)  # here, not in __init__, so that a `pretrain` stage can still train it
        super().before_experience(exp)

    def train_dataloader_for(self, exp):
        return None  # no gradient steps

    def after_experience(self, exp) -> None:
        self.eval()  # on the device the runner chose (trainer.accelerator), like evaluation
        for i in range(0, len(exp.train), 1024):  # one feature-extraction pass (no augmentation)
            self.observe(exp.train.x[i : i + 1024], exp.train.y[i : i + 1024])

    def can_forget_exactly(self, exp) -> bool:
        return True

    @torch.no_grad()
    def forget_exactly(self, exp) -> None:
        self.eval()
        means = RunningClassMeans(self.class_means, self.class_counts)
        for i in range(0, len(exp.forget), 1024):
            x, y = exp.forget.x[i : i + 1024].to(self.device), exp.forget.y[i : i + 1024].to(self.device)
            means.remove(self.features(x), y)
