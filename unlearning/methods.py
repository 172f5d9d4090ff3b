"""Unlearning methods answering forget requests for any CL strategy (config key ``unlearning``).

Each method is a small :class:`Unlearner` subclass with a ``loss(strategy, forget, retain)`` written
against :meth:`Strategy.log_likelihood <clframe.strategy.Strategy.log_likelihood>` (per-sample
log p(y|x)), so it works for every strategy; the base class runs the optimisation loop on batches of
``exp.forget`` / ``exp.retain`` and records forget / retain / test accuracy over the unlearning steps
(``history``, for curves).

Before the loop, ``self.ref`` is a frozen eval-mode copy of the whole strategy
(:meth:`Strategy.frozen_copy <clframe.strategy.Strategy.frozen_copy>`): the model before unlearning.
With ``freeze_norm=True`` (default) the strategy is unlearned in eval mode — normalisation layers use
and keep their running statistics, dropout is off — so at step 0 the model and its reference give the
same outputs (NPO's loss is exactly ``(2/β)·log 2``) and single-class forget batches cannot rewrite
BatchNorm statistics. ``freeze_norm=False`` trains in train mode (batch statistics, updated running stats).

The runner purges the forgotten samples from the strategy's declared sample stores afterwards and
verifies that none is reachable (``clframe.stores.purge_and_verify``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from clframe.errors import ConfigError
from clframe.fit import Engine
from clframe.optim import check_optimizer, make_optimizer
from clframe.registry import register_unlearner
from clframe.stream import split_test
from clframe.unlearning.pieces import accuracy_on, batches, mean_log_likelihood_on, npo_loss, simnpo_loss


# ---------------------------------------------------------------- methods
def mean_log_likelihood(strategy, batch: dict[str, Tensor]) -> Tensor:
    """The batch's mean log-likelihood per predicted unit: per sample for a classifier, per answer token
    for a language model (the negative of Hugging Face's token-mean loss, which open-unlearning's GA,
    GradDiff and retain terms use)."""
    logp = strategy.log_likelihood(batch)
    if not strategy.language_model:
        return logp.mean()
    return logp.sum() / strategy.target_length(batch).sum().clamp_min(1)


def auto_device(strategy) -> torch.device:
    """``device: auto``: the run's engine device (``trainer.accelerator``), else CUDA if available."""
    engine = getattr(strategy, "engine", None)
    if engine is not None:
        return engine.device
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class Unlearner:
    """Runs ``steps`` optimisation steps of :meth:`loss` on (forget batch, retain batch) pairs.

    Args: steps, lr, optimizer ("sgd" | "adam" | "adamw"), momentum, batch_size, grad_clip (max
    gradient norm, as HF Trainer's default 1.0 in LLM unlearning code; None: off); retain_weight
    (weight of the cross-entropy on retain data, 0 for a purely local method); eval_every (steps
    between accuracy probes for the curves, 0: none); device ("auto": CUDA when available);
    freeze_norm (unlearn in eval mode: normalisation statistics frozen, no dropout; see the module doc).
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
        freeze_norm: bool = True,
    ):
        check_optimizer("unlearning.optimizer", optimizer)
        if steps < 0 or lr <= 0 or batch_size <= 0:
            raise ConfigError(
                "unlearning", {"steps": steps, "lr": lr, "batch_size": batch_size}, "steps >= 0, lr > 0, batch_size > 0"
            )
        self.steps, self.lr, self.optimizer, self.momentum, self.batch_size = steps, lr, optimizer, momentum, batch_size
        self.retain_weight, self.eval_every, self.device, self.grad_clip = retain_weight, eval_every, device, grad_clip
        self.freeze_norm = freeze_norm
        self.history: list[dict[str, float | None]] = []
        self.ref = None  # the model before unlearning, during a request

    def setup(self, strategy, exp) -> None:
        """Called once before the loop (snapshot a reference model, ...)."""

    def loss(self, strategy, forget: dict[str, Tensor], retain: dict[str, Tensor] | None) -> Tensor:
        raise NotImplementedError

    def retain_loss(self, strategy, retain: dict[str, Tensor] | None) -> Tensor | float:
        if retain is None or self.retain_weight == 0:
            return 0.0
        return -self.retain_weight * mean_log_likelihood(strategy, retain)

    def _probe(self, strategy, exp, step: int) -> dict[str, float | None]:
        return {
            "step": step,
            "forget_acc": accuracy_on(strategy, exp.forget),
            "retain_acc": accuracy_on(strategy, exp.retain),
            "test_acc": accuracy_on(strategy, self._test),
            "forget_ll": mean_log_likelihood_on(strategy, exp.forget),
        }

    def __call__(self, strategy, exp) -> None:
        if exp.forget is None or not len(exp.forget):
            raise ConfigError("forget", exp.name, hint="a forget request needs a non-empty forget set")
        device = torch.device(self.device) if self.device != "auto" else auto_device(strategy)
        strategy.to(device)
        self.ref = strategy.frozen_copy()
        strategy.train(not self.freeze_norm)
        self._test = split_test(exp)[0] if exp.test is not None else None
        self.setup(strategy, exp)
        params = [p for p in strategy.parameters() if p.requires_grad]
        if not params:
            raise ConfigError(
                "unlearning", type(self).registry_name, hint=f"{type(strategy).__name__} has nothing to train"
            )
        opt = make_optimizer(params, self.optimizer, lr=self.lr, momentum=self.momentum)
        forget = batches(exp.forget, self.batch_size, strategy.seed, device)
        has_retain = exp.retain is not None and len(exp.retain)
        retain = batches(exp.retain, self.batch_size, strategy.seed + 1, device) if has_retain else None
        self.history = [self._probe(strategy, exp, 0)] if self.eval_every else []

        def loss_at(step: int) -> Tensor:
            if self.eval_every and step > 1 and (step - 1) % self.eval_every == 0:  # after step - 1's update
                self.history.append(self._probe(strategy, exp, step - 1))
            return self.loss(strategy, next(forget), next(retain) if retain is not None else None)

        engine = strategy.engine or Engine.default()
        name = getattr(type(self), "registry_name", type(self).__name__)
        engine.optimize(opt, range(1, self.steps + 1), loss_at, clip=self.grad_clip, desc=name, event=exp.id)
        if self.eval_every and self.steps and self.steps % self.eval_every == 0:
            self.history.append(self._probe(strategy, exp, self.steps))
        opt.zero_grad(set_to_none=True)  # the last gradients are of forgotten samples: none may outlive the request
        strategy.train()
        self.ref, self._test = None, None  # free the copy; the runner checks nothing forgotten is left


@register_unlearner("ga")
class GradientAscent(Unlearner):
    """Gradient ascent on the forget set's cross-entropy (no retain term by default)."""

    def __init__(self, *, retain_weight: float = 0.0, **kwargs):
        super().__init__(retain_weight=retain_weight, **kwargs)

    def loss(self, strategy, forget, retain):
        return mean_log_likelihood(strategy, forget) + self.retain_loss(strategy, retain)


@register_unlearner("graddiff")
class GradDiff(Unlearner):
    """Ascent on the forget set + descent on the retain set (``retain_weight``)."""

    def loss(self, strategy, forget, retain):
        return mean_log_likelihood(strategy, forget) + self.retain_loss(strategy, retain)


@register_unlearner("npo")
class NPO(Unlearner):
    """Negative preference optimisation against the model before unlearning (+ retain CE: NPO+RT;
    ``retain_weight=0`` for plain NPO)."""

    def __init__(self, *, beta: float = 0.5, **kwargs):
        super().__init__(**kwargs)
        self.beta = beta

    def loss(self, strategy, forget, retain):
        with torch.no_grad():
            logp_ref = self.ref.log_likelihood(forget)
        return npo_loss(strategy.log_likelihood(forget), logp_ref, self.beta) + self.retain_loss(strategy, retain)


@register_unlearner("simnpo")
class SimNPO(Unlearner):
    """Reference-free NPO with margin ``gamma``, length-normalised by the answer's token count
    (:meth:`Strategy.target_length <clframe.strategy.Strategy.target_length>`; a class label has length 1)."""

    def __init__(self, *, beta: float = 0.5, gamma: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.beta, self.gamma = beta, gamma

    def loss(self, strategy, forget, retain):
        logp, length = strategy.log_likelihood(forget), strategy.target_length(forget)
        return simnpo_loss(logp, self.beta, self.gamma, length) + self.retain_loss(strategy, retain)


@register_unlearner("finetune_retain")
class FinetuneRetain(Unlearner):
    """Reference point: fine-tune on the retain set only (forgetting by interference)."""

    def __call__(self, strategy, exp):
        if exp.retain is None or not len(exp.retain):
            raise ConfigError("unlearning.name", "finetune_retain", hint="this forget request has no retain data")
        super().__call__(strategy, exp)

    def loss(self, strategy, forget, retain):
        return -mean_log_likelihood(strategy, retain)


@register_unlearner("random_label")
class RandomLabel(Unlearner):
    """Reference point: train the forget set towards random wrong labels (among allowed classes) + retain CE."""

    language_model = False  # a class label to replace: not defined for a language model's answers

    def loss(self, strategy, forget, retain):
        y, task = forget["y"], forget["task"]
        allowed = strategy.class_mask(task).expand(len(y), -1).float().clone()
        allowed[torch.arange(len(y)), y] = 0
        allowed[allowed.sum(1) == 0] = 1  # a single allowed class: nothing else to choose
        wrong = torch.multinomial(allowed, 1).squeeze(1)
        return -strategy.log_likelihood({**forget, "y": wrong}).mean() + self.retain_loss(strategy, retain)
