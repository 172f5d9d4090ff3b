"""Unlearning methods answering forget requests for any CL strategy (config key ``unlearning``).

Each method is a small :class:`Unlearner` subclass with a ``loss(strategy, forget, retain)``; the
base class runs the optimisation loop on batches of ``exp.forget`` / ``exp.retain``, records forget /
retain / test accuracy over the unlearning steps (``history``, for curves) and finally purges the
forgotten samples from the strategy's replay buffers, so that later experiences cannot replay them.

Model snapshots that a CL strategy keeps (LwF's old model, EWC's anchor and Fisher) still encode
the forgotten data; they are not rewritten here (a strategy that must refresh them can override
``Strategy.unlearn`` and call ``super().unlearn(exp)`` first). Any attribute of the strategy with a
``forget_ids(ids)`` method is called too, so other sample stores can opt in.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from clframe.errors import ConfigError, NonFiniteLossError
from clframe.registry import register_unlearner
from clframe.strategy import MASK_VALUE, OPTIMIZERS
from strategies.losses import frozen_copy
from strategies.unlearning_pieces import (
    accuracy_on,
    batches,
    npo_loss,
    purge_forgotten,
    simnpo_loss,
    split_test,
    true_logprob,
)


# ---------------------------------------------------------------- methods
class Unlearner:
    """Runs ``steps`` optimisation steps of :meth:`loss` on (forget batch, retain batch) pairs.

    Args: steps, lr, optimizer ("sgd" | "adam" | "adamw"), momentum, batch_size, grad_clip (max
    gradient norm, as HF Trainer's default 1.0 in LLM unlearning code; None: off); retain_weight
    (weight of the cross-entropy on retain data, 0 for a purely local method); eval_every (steps
    between accuracy probes for the curves, 0: none); device ("auto": CUDA when available).
    """

    def __init__(
        self,
        *,
        steps: int = 100,
        lr: float = 0.01,
        optimizer: str = "sgd",
        momentum: float = 0.9,
        batch_size: int = 64,
        grad_clip: float | None = 1.0,
        retain_weight: float = 1.0,
        eval_every: int = 10,
        device: str = "auto",
    ):
        if optimizer not in OPTIMIZERS:
            raise ConfigError("unlearning.optimizer", optimizer, sorted(OPTIMIZERS))
        if steps < 0 or lr <= 0 or batch_size <= 0:
            raise ConfigError(
                "unlearning", {"steps": steps, "lr": lr, "batch_size": batch_size}, "steps >= 0, lr > 0, batch_size > 0"
            )
        self.steps, self.lr, self.optimizer, self.momentum, self.batch_size = steps, lr, optimizer, momentum, batch_size
        self.retain_weight, self.eval_every, self.device, self.grad_clip = retain_weight, eval_every, device, grad_clip
        self.history: list[dict[str, float | None]] = []

    def setup(self, strategy, exp) -> None:
        """Called once before the loop (snapshot a reference model, ...)."""

    def loss(self, strategy, forget: dict[str, Tensor], retain: dict[str, Tensor] | None) -> Tensor:
        raise NotImplementedError

    def retain_loss(self, strategy, retain: dict[str, Tensor] | None) -> Tensor | float:
        if retain is None or self.retain_weight == 0:
            return 0.0
        return self.retain_weight * F.cross_entropy(strategy(retain["x"], retain["task"]), retain["y"])

    def _probe(self, strategy, exp, step: int) -> dict[str, float | None]:
        return {
            "step": step,
            "forget_acc": accuracy_on(strategy, exp.forget),
            "retain_acc": accuracy_on(strategy, exp.retain),
            "test_acc": accuracy_on(strategy, self._test),
        }

    def __call__(self, strategy, exp) -> None:
        if exp.forget is None or not len(exp.forget):
            raise ConfigError("forget", exp.name, hint="a forget request needs a non-empty forget set")
        auto = self.device == "auto"
        device = torch.device("cuda" if auto and torch.cuda.is_available() else ("cpu" if auto else self.device))
        strategy.to(device).train()
        self._test = split_test(exp)[0] if exp.test is not None else None
        self.setup(strategy, exp)
        params = [p for p in strategy.parameters() if p.requires_grad]
        kwargs = {"lr": self.lr, **({"momentum": self.momentum} if self.optimizer == "sgd" else {})}
        opt = OPTIMIZERS[self.optimizer](params, **kwargs)
        forget = batches(exp.forget, self.batch_size, strategy.seed, device)
        has_retain = exp.retain is not None and len(exp.retain)
        retain = batches(exp.retain, self.batch_size, strategy.seed + 1, device) if has_retain else None
        self.history = [self._probe(strategy, exp, 0)] if self.eval_every else []
        for step in range(1, self.steps + 1):
            loss = self.loss(strategy, next(forget), next(retain) if retain is not None else None)
            if not torch.isfinite(loss):
                raise NonFiniteLossError(exp.id, step, float(loss))
            opt.zero_grad()
            loss.backward()
            if self.grad_clip:
                torch.nn.utils.clip_grad_norm_(params, self.grad_clip)
            opt.step()
            if self.eval_every and step % self.eval_every == 0:
                self.history.append(self._probe(strategy, exp, step))
        purge_forgotten(strategy, exp.forget.ids)


@register_unlearner("ga")
class GradientAscent(Unlearner):
    """Gradient ascent on the forget set's cross-entropy (no retain term by default)."""

    def __init__(self, *, retain_weight: float = 0.0, **kwargs):
        super().__init__(retain_weight=retain_weight, **kwargs)

    def loss(self, strategy, forget, retain):
        return -F.cross_entropy(strategy(forget["x"], forget["task"]), forget["y"]) + self.retain_loss(strategy, retain)


@register_unlearner("graddiff")
class GradDiff(Unlearner):
    """Ascent on the forget set + descent on the retain set (``retain_weight``)."""

    def loss(self, strategy, forget, retain):
        return -F.cross_entropy(strategy(forget["x"], forget["task"]), forget["y"]) + self.retain_loss(strategy, retain)


@register_unlearner("npo")
class NPO(Unlearner):
    """Negative preference optimisation against the model before unlearning (+ retain CE: NPO+RT;
    ``retain_weight=0`` for plain NPO)."""

    def __init__(self, *, beta: float = 0.5, **kwargs):
        super().__init__(**kwargs)
        self.beta = beta

    def setup(self, strategy, exp):
        self.ref = frozen_copy(strategy)

    def loss(self, strategy, forget, retain):
        x, y, task = forget["x"], forget["y"], forget["task"]
        with torch.no_grad():
            ref = self.ref(x).masked_fill(~strategy.class_mask(task), MASK_VALUE)
        logp = true_logprob(strategy(x, task), y)
        return npo_loss(logp, true_logprob(ref, y), self.beta) + self.retain_loss(strategy, retain)


@register_unlearner("simnpo")
class SimNPO(Unlearner):
    """Reference-free NPO with margin ``gamma`` (length-normalised; a class label has length 1)."""

    def __init__(self, *, beta: float = 0.5, gamma: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.beta, self.gamma = beta, gamma

    def loss(self, strategy, forget, retain):
        logp = true_logprob(strategy(forget["x"], forget["task"]), forget["y"])
        return simnpo_loss(logp, self.beta, self.gamma) + self.retain_loss(strategy, retain)


@register_unlearner("finetune_retain")
class FinetuneRetain(Unlearner):
    """Reference point: fine-tune on the retain set only (forgetting by interference)."""

    def __call__(self, strategy, exp):
        if exp.retain is None or not len(exp.retain):
            raise ConfigError("unlearning.name", "finetune_retain", hint="this forget request has no retain data")
        super().__call__(strategy, exp)

    def loss(self, strategy, forget, retain):
        return F.cross_entropy(strategy(retain["x"], retain["task"]), retain["y"])


@register_unlearner("random_label")
class RandomLabel(Unlearner):
    """Reference point: train the forget set towards random wrong labels (among allowed classes) + retain CE."""

    def loss(self, strategy, forget, retain):
        x, y, task = forget["x"], forget["y"], forget["task"]
        allowed = strategy.class_mask(task).expand(len(y), -1).float().clone()
        allowed[torch.arange(len(y)), y] = 0
        allowed[allowed.sum(1) == 0] = 1  # a single allowed class: nothing else to choose
        wrong = torch.multinomial(allowed, 1).squeeze(1)
        return F.cross_entropy(strategy(x, task), wrong) + self.retain_loss(strategy, retain)
