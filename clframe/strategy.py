"""The base class every continual-learning / unlearning method subclasses.

A :class:`Strategy` is a ``LightningModule`` that owns a backbone and a linear head
over all ``n_classes`` (pre-allocated; classes not seen yet are masked), the optimizer
and the standard supervised loss. A method overrides only what it changes:

- :meth:`training_loss` — the per-step loss (EWC adds a penalty, LwF distillation);
- :meth:`before_experience` / :meth:`after_experience` — snapshot, Fisher, buffers...;
- :meth:`train_dataloader_for` — replay methods mix their buffer into the batches;
- :meth:`unlearn` — answer a forget request (``forget_exactly`` for methods that can, else the unlearner);
- :meth:`state_for_checkpoint` / :meth:`load_checkpoint_state` — state beyond ``state_dict()``.

A backbone with ``language_model = True`` (``clframe.backbones.causal_lm``) makes the strategy a causal
language model: there is no class head, :meth:`logits` are next-token logits, :meth:`log_likelihood` is
the log-probability of each sample's answer tokens and the loss their mean negative log-likelihood; the
strategies whose :attr:`capabilities` say ``language_model=True`` run on it unchanged.

Contracts (docs/contracts.md): sample stores are declared with :meth:`register_store` (checkpointed
and purged by the base class / runner), :meth:`log_likelihood` is the one per-sample likelihood every
unlearning method uses, :meth:`frozen_copy` is the reference model, and :attr:`capabilities` says which
settings and forget requests a method supports (checked before a run writes anything).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clframe.backbones.simple import in_weight_dtype
from clframe.errors import ConfigError, NonFiniteLossError
from clframe.optim import check_optimizer, make_optimizer
from clframe.registry import STRATEGIES, UNLEARNERS
from clframe.stream import Experience, Stream, TensorLoader

MASK_VALUE = -1e4  # logit of a class that is not allowed; finite so fp16 and KL stay well-defined
SETTINGS = ("class", "task", "domain")


@dataclass(frozen=True)
class Capabilities:
    """What a strategy supports; checked against the stream and config before a run writes anything.

    Attributes:
        settings: the stream settings it can run in (``class``, ``task``, ``domain``).
        needs_task_id: it picks task-specific parameters by the task id at test time (task-IL only).
        gradient_unlearning: forget requests can be answered by a gradient unlearner (``unlearning=<name>``);
            ``False`` for methods with nothing to train (e.g. a frozen backbone with class means).
        language_model: it also runs with a causal-LM backbone (``backbone.language_model``): it uses only
            the hooks below that the base class answers for both kinds (no class logits of its own).
    """

    settings: tuple[str, ...] = SETTINGS
    needs_task_id: bool = False
    gradient_unlearning: bool = True
    language_model: bool = False


def _inputs_in_weight_dtype(module: nn.Module, args: tuple) -> tuple | None:
    """Forward pre-hook: the inputs ``x`` (first argument) in the weights' dtype (see :func:`in_weight_dtype`)."""
    if args:
        x = in_weight_dtype(module, args[0])
        if x is not args[0]:
            return (x, *args[1:])
    return None


class Strategy(pl.LightningModule):
    """Backbone + growing head + hooks. Subclass and override 1–3 hooks.

    Class attributes a method may set: :attr:`capabilities` (:class:`Capabilities`) and
    :attr:`derived_state` (``{state: policy}``: what happens on a forget request to state that was
    computed from training data but holds no samples, e.g. EWC's Fisher; written to ``metrics.json``).

    Args:
        backbone: a module with ``forward_features`` and ``num_features``.
        n_classes: total number of classes in the stream (head is pre-allocated).
        setting: ``"class"``, ``"task"`` or ``"domain"`` (see :class:`~clframe.stream.Stream`).
        lr, optimizer, momentum, weight_decay: optimiser settings (new optimiser per experience).
        batch_size: training batch size.
        reset_optimizer: a fresh optimiser for every experience (default). ``False`` carries the
            optimiser state (Adam moments, momentum) from one experience to the next, as code that
            builds one optimiser for the whole stream does (e.g. van de Ven et al.'s, by default).
    """

    capabilities = Capabilities()
    derived_state: dict[str, str] = {}

    def __init__(
        self,
        backbone: nn.Module,
        n_classes: int,
        *,
        setting: str = "class",
        lr: float = 0.01,
        optimizer: str = "sgd",
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        batch_size: int = 128,
        reset_optimizer: bool = True,
    ):
        super().__init__()
        if not (math.isfinite(lr) and lr > 0):
            raise ConfigError("strategy.lr", lr, "a positive finite number")
        if not (math.isfinite(momentum) and 0 <= momentum < 1):
            raise ConfigError("strategy.momentum", momentum, "a number in [0, 1)")
        if not (math.isfinite(weight_decay) and weight_decay >= 0):
            raise ConfigError("strategy.weight_decay", weight_decay, "a non-negative finite number")
        if batch_size <= 0:
            raise ConfigError("strategy.batch_size", batch_size, "a positive integer")
        check_optimizer("strategy.optimizer", optimizer)
        self.backbone = backbone
        self.language_model = bool(getattr(backbone, "language_model", False))
        self.head = None if self.language_model else nn.Linear(backbone.num_features, n_classes)
        self.n_classes, self.setting = n_classes, setting
        self.lr, self.optimizer_name, self.momentum, self.weight_decay = lr, optimizer, momentum, weight_decay
        self.batch_size = batch_size
        self.reset_optimizer = reset_optimizer
        self.optimizer_state: dict[str, Any] | None = None  # kept between experiences if not reset_optimizer
        self.register_buffer("seen", torch.zeros(n_classes, dtype=torch.bool))
        # task id -> boolean mask over classes; a buffer so that it follows the device
        self.register_buffer("task_classes", torch.zeros(0, n_classes, dtype=torch.bool))
        self.experience: Experience | None = None
        self.seed = 0
        # set by the training loop: optimiser steps taken / planned in the current experience (schedules)
        self.step_in_experience, self.steps_per_experience = 0, 1
        self.unlearner = None  # set by the runner from cfg.unlearning; answers forget requests
        self.engine = None  # set by the runner: the run's clframe.fit.Engine (auxiliary loops train on its device)
        self._stores: dict[str, Any] = {}  # name -> SampleStore (clframe.stores)
        self.register_forward_pre_hook(_inputs_in_weight_dtype)  # 64-true / bf16-true: float32 data meet cast weights

    # ------------------------------------------------------------------ sample stores
    def register_store(self, name: str, store: Any) -> Any:
        """Declare a sample store (anything holding training samples or per-sample targets; see
        :class:`clframe.stores.SampleStore`). The base class checkpoints it and the runner purges it
        after every forget request. Returns ``store``, so ``self.memory = self.register_store("memory", ...)``."""
        for method in ("ids", "forget", "state", "load"):
            if not callable(getattr(store, method, None)):
                raise TypeError(f"store {name!r} ({type(store).__name__}) has no {method}(); see clframe.stores")
        self._stores[name] = store
        return store

    def sample_stores(self) -> dict[str, Any]:
        """The declared sample stores, by name."""
        return dict(self._stores)

    # ------------------------------------------------------------------ model
    def features(self, x: Tensor) -> Tensor:
        """Representation used by representation metrics and prototype classifiers."""
        return self.backbone.forward_features(x)

    def logits(self, x: Tensor) -> Tensor:
        """Raw head outputs over all ``n_classes`` (no masking); a language model's next-token logits."""
        if self.language_model:
            return self.backbone.token_logits(x)
        return self.head(self.features(x))

    def class_mask(self, task: Tensor | None = None) -> Tensor:
        """Boolean (N, C) or (C,) mask of allowed classes: seen classes, or the task's classes."""
        if self.setting == "task" and task is not None and len(self.task_classes):
            return self.task_classes[task.clamp(max=len(self.task_classes) - 1)]
        if self.setting == "domain" or not bool(self.seen.any()):
            return torch.ones_like(self.seen)
        return self.seen

    def forward(self, x: Tensor, task: Tensor | None = None) -> Tensor:
        """Logits with disallowed classes set to ``MASK_VALUE`` (a language model: next-token logits)."""
        if self.language_model:
            return self.logits(x)
        return self.logits(x).masked_fill(~self.class_mask(task), MASK_VALUE)

    def log_likelihood(self, batch: dict[str, Tensor]) -> Tensor:
        """Per-sample ``log p(y | x)`` of the model's own prediction (``forward``, masks included):
        the one likelihood every unlearning method (GA, GradDiff, NPO, SimNPO, ...) is written against.
        For a language model, ``log p(answer | prompt)``: the sum over the answer's tokens."""
        if self.language_model:
            return self.backbone.answer_log_likelihood(batch["x"])
        return self(batch["x"], batch["task"]).log_softmax(1).gather(1, batch["y"][:, None]).squeeze(1)

    def target_length(self, batch: dict[str, Tensor]) -> Tensor:
        """Per-sample number of predicted tokens behind :meth:`log_likelihood` (1 for a class label, the
        answer's token count for a language model): SimNPO's length normalisation, token-mean losses."""
        if self.language_model:
            return self.backbone.answer_length(batch["x"])
        return torch.ones(len(batch["y"]), device=batch["y"].device)

    def correct(self, x: Tensor, y: Tensor, task: Tensor) -> Tensor:
        """Per-sample bool: the prediction is right (the accuracy matrix's definition). A language model is
        right when its greedy next token is the answer's at every answer position (teacher forcing)."""
        if self.language_model:
            return self.backbone.answer_correct(x)
        return self(x, task).argmax(1) == y

    def frozen_copy(self) -> Strategy:
        """A frozen, eval-mode deep copy of the whole strategy (its own ``forward``, masks, heads and
        buffers): the reference model of NPO-style unlearning, equal to this model at the time of the call.
        Sample stores, the current experience and the unlearner are shared, not copied."""
        memo: dict[int, Any] = {id(v): v for v in (self.experience, *self._stores.values()) if v is not None}
        for attr in ("unlearner", "_trainer", "_fabric"):
            if getattr(self, attr, None) is not None:
                memo[id(getattr(self, attr))] = None
        ref = copy.deepcopy(self, memo)
        ref.requires_grad_(False)
        return ref.eval()

    # ------------------------------------------------------------------ training
    def training_loss(self, batch: dict[str, Tensor]) -> Tensor:
        """Cross-entropy over the allowed classes (a language model: the mean NLL of the batch's answer
        tokens, as Hugging Face's loss). Override to add penalties / other losses."""
        if self.language_model:
            return -self.log_likelihood(batch).sum() / self.target_length(batch).sum().clamp_min(1)
        return F.cross_entropy(self(batch["x"], batch["task"]), batch["y"])

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        """One step's loss. The Fabric loop (``clframe.fit``) logs it and checks it is finite;
        under ``trainer.engine=lightning`` this method does both through the Trainer."""
        loss = self.training_loss(batch)
        trainer = self._trainer
        if trainer is not None:
            self.step_in_experience = trainer.global_step
            self.finite_loss(loss, trainer.global_step)
            every = trainer.log_every_n_steps
            if every and batch_idx % every == 0:  # self.log costs ~10% of a small step: not every step
                self.log("train/loss", loss.detach(), prog_bar=True, batch_size=len(batch["y"]))
        return loss

    def on_train_start(self) -> None:
        """Lightning engine only (the Fabric loop sets this itself): the planned steps, once per fit."""
        self.steps_per_experience = max(1, int(self.trainer.estimated_stepping_batches))

    def finite_loss(self, loss: Tensor, step: int) -> float:
        """``loss`` as a float; a non-finite loss raises :class:`NonFiniteLossError` (the run stops, results kept)."""
        value = float(loss.detach())
        if not math.isfinite(value):
            raise NonFiniteLossError(self.experience.id if self.experience is not None else -1, step, value)
        return value

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        """Move a (nested) dict batch to ``device``; a no-op when it is already there (CPU runs)."""

        def move(obj: Any) -> Any:
            if isinstance(obj, Tensor):
                return obj if obj.device == device else obj.to(device, non_blocking=True)
            if isinstance(obj, dict):
                return {k: move(v) for k, v in obj.items()}
            if isinstance(obj, (list, tuple)):
                return type(obj)(move(v) for v in obj)
            return obj

        return move(batch)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = make_optimizer(
            params, self.optimizer_name, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay
        )
        if not self.reset_optimizer and self.optimizer_state is not None:
            try:
                optimizer.load_state_dict(self.optimizer_state)
            except ValueError as err:
                raise ConfigError(
                    "strategy.reset_optimizer", False, hint=f"{type(self).__name__} trains other parameters now ({err})"
                ) from err
        return optimizer

    # ------------------------------------------------------------------ hooks
    def before_experience(self, exp: Experience) -> None:
        """Called before training on ``exp``. The base class records its classes / task."""
        self.experience = exp
        classes = torch.as_tensor(exp.classes, dtype=torch.long, device=self.seen.device)
        self.seen[classes] = True
        if exp.task_id >= len(self.task_classes):
            grow = torch.zeros(exp.task_id + 1 - len(self.task_classes), self.n_classes, dtype=torch.bool)
            self.task_classes = torch.cat([self.task_classes, grow.to(self.task_classes.device)])
        self.task_classes[exp.task_id, classes] = True

    def after_experience(self, exp: Experience) -> None:
        """Called after training on ``exp`` (compute Fisher, fill buffers, snapshot...)."""

    def train_dataloader_for(self, exp: Experience) -> TensorLoader | None:
        """The batches to train on for ``exp``; replay methods mix in their buffer here.
        ``None`` means no gradient steps: the runner skips training (e.g. NMC)."""
        return TensorLoader(exp.train, self.batch_size, shuffle=True, seed=self.seed, transform=exp.transform)

    def unlearn(self, exp: Experience) -> str:
        """Answer a forget request (``exp.forget`` / ``exp.retain``); returns how (``"exact"`` or the
        unlearner's name).

        A strategy that can answer this request exactly (:meth:`can_forget_exactly`) does so; otherwise
        ``self.unlearner`` (config key ``unlearning``) does, so any CL strategy combines with any
        unlearning method. Sample stores are purged afterwards by the runner (``clframe.stores``)."""
        if self.can_forget_exactly(exp):
            self.forget_exactly(exp)
            if self.unlearner is not None:
                self.unlearner.history = []  # no unlearning curve for an exact answer
            return "exact"
        if self.unlearner is None:
            raise ConfigError(
                "unlearning", None, hint=f"{exp.name} needs an unlearning method (clframe list unlearner)"
            )
        self.unlearner(self, exp)
        return getattr(self.unlearner, "registry_name", type(self.unlearner).__name__)

    def can_forget_exactly(self, exp: Experience) -> bool:
        """Whether this strategy answers ``exp`` exactly, with no gradient unlearning (e.g. by deleting the
        forgotten task's parameters). Must not change anything: it is also asked before the run starts."""
        return False

    def forget_exactly(self, exp: Experience) -> None:
        """The exact answer to ``exp`` (called only when :meth:`can_forget_exactly` is true)."""
        raise NotImplementedError

    def after_forget(self, exp: Experience) -> None:
        """Called after the sample stores were purged of ``exp.forget``: refresh state derived from them
        (e.g. class means of exemplars). Document what is refreshed or kept in :attr:`derived_state`."""

    # ------------------------------------------------------------------ checkpoint
    def checkpoint_state(self) -> dict[str, Any]:
        """Everything resume needs beyond ``state_dict()``: the declared stores and :meth:`state_for_checkpoint`."""
        return {"stores": {name: store.state() for name, store in self._stores.items()}, **self.state_for_checkpoint()}

    def restore_checkpoint_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`checkpoint_state` (before ``load_state_dict``)."""
        state = dict(state)
        for name, store_state in state.pop("stores", {}).items():
            self._stores[name].load(store_state)
        self.load_checkpoint_state(state)

    def state_for_checkpoint(self) -> dict[str, Any]:
        """Extra state (tensors / plain containers) that resume needs beyond ``state_dict()``."""
        return {}

    def load_checkpoint_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_for_checkpoint`. Called *before* ``load_state_dict`` on resume,
        so a strategy can re-create sub-modules (e.g. a frozen old model) that the state dict fills."""

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):  # noqa: D102
        # buffers may grow along the stream (task_classes, class groups): take the checkpoint's shape
        for name, buf in list(self.named_buffers()):
            if name in state_dict and state_dict[name].shape != buf.shape:
                owner, _, attr = name.rpartition(".")
                setattr(self.get_submodule(owner) if owner else self, attr, torch.zeros_like(state_dict[name]))
        return super().load_state_dict(state_dict, strict=strict, assign=assign)


def check_capabilities(strategy: Strategy, stream: Stream, unlearning: str | None) -> None:
    """Refuse a strategy × stream × unlearning combination the strategy does not support, before the run
    writes anything: the stream's setting, task ids at test time, and an answer for every forget request."""
    caps, name = strategy.capabilities, getattr(strategy, "registry_name", type(strategy).__name__)
    check_modality(strategy)
    if stream.setting not in caps.settings or (caps.needs_task_id and stream.setting != "task"):
        valid = ["task"] if caps.needs_task_id else list(caps.settings)
        why = "it needs the task id at test time" if caps.needs_task_id else "it supports these settings only"
        raise ConfigError("scenario.setting", stream.setting, valid, hint=f"strategy {name}: {why}")
    for exp in stream.experiences:
        if exp.kind != "forget" or strategy.can_forget_exactly(exp):
            continue
        if not caps.gradient_unlearning:
            raise ConfigError(
                "unlearning" if unlearning else "scenario.requests",
                unlearning if unlearning else exp.name,
                hint=f"strategy {name} cannot be unlearned by gradient steps and has no exact answer to {exp.name}",
            )
        if unlearning is None:
            raise ConfigError(
                "unlearning", None, UNLEARNERS.names(), hint=f"the stream has a forget request ({exp.name})"
            )
    if unlearning and not caps.gradient_unlearning:
        raise ConfigError(
            "unlearning",
            unlearning,
            ["null"],
            hint=f"strategy {name} answers forget requests exactly, not by gradients",
        )


def check_modality(strategy: Strategy) -> None:
    """A language model runs only with strategies and unlearners that declare they support it (the backbone
    was matched to the stream when it was built: :func:`clframe.runner.build_strategy`)."""
    name = getattr(strategy, "registry_name", type(strategy).__name__)
    if strategy.language_model and not strategy.capabilities.language_model:
        valid = [
            n for n in STRATEGIES.names() if getattr(STRATEGIES.get(n), "capabilities", Capabilities()).language_model
        ]
        raise ConfigError("strategy", name, valid, hint="this strategy does not run on a causal language model")
    unlearner = strategy.unlearner
    if strategy.language_model and unlearner is not None and not getattr(unlearner, "language_model", True):
        valid = [n for n in UNLEARNERS.names() if getattr(UNLEARNERS.get(n), "language_model", True)]
        raise ConfigError("unlearning", unlearner.registry_name, valid, hint="it is defined for class labels only")
