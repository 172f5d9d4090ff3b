"""CLR: Channel-wise Lightweight Reprogramming (Ge et al., ICCV 2023).

An immutable "anchor" CNN is shared by all tasks. Every ``nn.Conv2d`` of the backbone is wrapped
(module replacement, so any conv backbone works): per task, its output goes through a depthwise
``k x k`` conv initialised to the identity (``nn.init.dirac_``, no bias, as in the authors'
``ReGhos_Block``); every normalisation layer gets a per-task copy (the authors train all BN layers
per task) and each task has its own linear head. Only the active task's modules are trained, and
the task id picks them at test time, so earlier tasks are bit-identical after later ones.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clframe.errors import ConfigError
from clframe.fit import Engine
from clframe.optim import make_optimizer
from clframe.registry import register_strategy
from clframe.strategies.reprogram import Router, TaskSwitch, wrap
from clframe.strategy import MASK_VALUE, Capabilities, Strategy

ANCHORS = ("rotation", "pretrained", "random")


@register_strategy("clr")
class CLR(Strategy):
    """Task-IL: frozen anchor + per-task channel-wise reprogramming convs, norms and head.

    ``anchor``: ``rotation`` trains the anchor on rotation prediction (self-supervised, labels
    unused) on the first experience's inputs, then freezes it; ``pretrained`` keeps the backbone
    as the pretraining stage (``cfg.pretrain``, with ``freeze: false``) left it; ``random`` freezes
    the random init. ``reprogram="full"`` instead gives each task a full trainable copy of the
    backbone (the "per-task fine-tuned model" baseline). ``skip_pointwise`` leaves 1x1 convs
    unprogrammed (the authors' ``reduced_v1``).

    Forget requests: a request that removes a whole task (no retained sample of it left) is answered
    **exactly** by resetting that task's programs, norm copies and head to their initial values (same
    seed as when the task was added), which is what a model retrained without the task has: the result
    equals the retrain oracle bit for bit — unless the anchor was trained on that task's inputs
    (``anchor=rotation`` and the first task), then a gradient unlearner is needed. Other requests go to
    the gradient unlearner, which may change only the parameters of the tasks in the forget set."""

    capabilities = Capabilities(settings=("task",), needs_task_id=True)

    def __init__(
        self,
        *args,
        kernel_size: int = 3,
        reprogram: str = "channel",
        skip_pointwise: bool = False,
        anchor: str = "rotation",
        proxy_epochs: int = 1,
        proxy_lr: float = 0.01,
        proxy_batch_size: int = 64,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        if reprogram not in ("channel", "full"):
            raise ConfigError("strategy.reprogram", reprogram, ["channel", "full"])
        if anchor not in ANCHORS:
            raise ConfigError("strategy.anchor", anchor, ANCHORS)
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ConfigError("strategy.kernel_size", kernel_size, "an odd positive integer")
        self.anchor, self.proxy_epochs, self.proxy_lr, self.proxy_batch_size = (
            anchor,
            proxy_epochs,
            proxy_lr,
            proxy_batch_size,
        )
        self.router = Router()
        wrap(self.backbone, self.router, kernel_size=kernel_size, reprogram=reprogram, skip_pointwise=skip_pointwise)
        self.heads = nn.ModuleDict()
        self.current: str | None = None
        self.anchor_ready = anchor != "rotation"
        self.task_seeds: dict[str, int] = {}  # task -> strategy.seed when its modules were created
        self.anchor_task: str | None = None  # the task whose inputs trained the rotation anchor

    def switches(self) -> list[TaskSwitch]:
        return [m for m in self.backbone.modules() if isinstance(m, TaskSwitch)]

    def add_task(self, key: str) -> None:
        for m in self.switches():
            m.add_task(key)
        self.heads[key] = nn.Linear(self.backbone.num_features, self.n_classes).to(self.head.weight.device)

    def before_experience(self, exp):
        super().before_experience(exp)
        self.requires_grad_(False)  # anchor, base head and every earlier task stay fixed for good
        self.current = str(exp.task_id)
        if self.current not in self.heads:
            self.task_seeds[self.current] = self.seed
            self.add_task(self.current)
        for m in self.switches():
            m.programs[self.current].requires_grad_(True)
        self.heads[self.current].requires_grad_(True)

    def on_fit_start(self):
        if not self.anchor_ready:  # runs on the training device, after the optimiser was built
            self.train_rotation_proxy(self.experience)
            for m in self.switches():  # copies of anchor layers start from the trained anchor
                if not m.after:
                    m.programs[self.current].load_state_dict(m.anchor.state_dict())
            self.anchor_ready, self.anchor_task = True, self.current

    def train_rotation_proxy(self, exp) -> None:
        """RotNet-style proxy: predict which of 0/90/180/270 degrees each image was rotated by."""
        x_all = exp.train.x
        if x_all.shape[-1] != x_all.shape[-2]:
            raise ConfigError("strategy.anchor", "rotation", ANCHORS, hint="rotation needs square images")
        anchor = [p for n, p in self.backbone.named_parameters() if ".programs." not in f".{n}"]
        clf = nn.Linear(self.backbone.num_features, 4).to(self.device, self.head.weight.dtype)  # 64-true: double
        opt = make_optimizer([*anchor, *clf.parameters()], "sgd", lr=self.proxy_lr, momentum=0.9)
        gen = torch.Generator().manual_seed(self.seed + 17)
        self.router.task = None
        self.backbone.train()
        batches = (
            idx
            for _ in range(self.proxy_epochs)
            for idx in torch.randperm(len(x_all), generator=gen).split(self.proxy_batch_size)
        )

        def loss_of(idx):
            x = x_all[idx] if exp.transform is None else exp.transform(x_all[idx])
            x = torch.cat([torch.rot90(x, k, dims=(2, 3)) for k in range(4)]).to(self.device)
            y = torch.arange(4, device=self.device).repeat_interleave(len(idx))
            return F.cross_entropy(clf(self.backbone.forward_features(x)), y)

        with torch.enable_grad():
            for p in anchor:
                p.requires_grad_(True)
            total = self.proxy_epochs * -(-len(x_all) // self.proxy_batch_size)
            (self.engine or Engine.default()).optimize(opt, batches, loss_of, total=total, desc="CLR rotation proxy")
            for p in anchor:
                p.requires_grad_(False)

    def forward(self, x: Tensor, task: Tensor | None = None) -> Tensor:
        """Each sample goes through its task's programs and head (an unseen task id: the latest)."""
        if not len(self.heads):
            return super().forward(x, task)
        if task is None:
            task = torch.full((len(x),), int(self.current), device=x.device, dtype=torch.long)
        groups = task.unique().tolist()
        out = None if len(groups) == 1 else x.new_full((len(x), self.n_classes), MASK_VALUE)
        try:
            for t in groups:
                key = str(t) if str(t) in self.heads else self.current
                self.router.task = key
                if out is None:
                    out = self.heads[key](self.backbone.forward_features(x))
                else:
                    rows = task == t
                    out[rows] = self.heads[key](self.backbone.forward_features(x[rows]))
        finally:
            self.router.task = None  # features() outside forward: the task-agnostic anchor
        return out.masked_fill(~self.class_mask(task), MASK_VALUE)

    # ---------------------------------------------------------------- forget requests
    def forgotten_task(self, exp) -> str | None:
        """The task ``exp`` removes entirely (its only task, none of its samples retained), or ``None``."""
        tasks = exp.forget.task.unique().tolist()
        if len(tasks) != 1 or (exp.retain is not None and bool((exp.retain.task == tasks[0]).any())):
            return None
        return str(tasks[0])

    def can_forget_exactly(self, exp) -> bool:
        key = self.forgotten_task(exp)
        if key is None or (self.anchor == "rotation" and self.anchor_task in (None, key)):
            return False  # partial request, or the anchor itself saw the task (or will: not trained yet)
        return True

    def forget_exactly(self, exp) -> None:
        key = self.forgotten_task(exp)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.task_seeds[key])
            self.add_task(key)  # the modules the task started from, as a model that never learned it has
        self.requires_grad_(False)

    def unlearn(self, exp):
        if not self.can_forget_exactly(exp):  # gradient unlearning may move only the forgotten tasks' modules
            self.requires_grad_(False)
            for key in {str(t) for t in exp.forget.task.unique().tolist()} & set(self.heads):
                self.heads[key].requires_grad_(True)
                for m in self.switches():
                    m.programs[key].requires_grad_(True)
        try:
            return super().unlearn(exp)
        finally:
            self.requires_grad_(False)

    def overhead(self) -> dict[str, float]:
        """Parameters added per task, absolute and as % of the anchor backbone."""
        backbone = sum(p.numel() for n, p in self.backbone.named_parameters() if ".programs." not in f".{n}")
        key = self.current or next(iter(self.heads), None)
        convs = sum(p.numel() for m in self.switches() if m.after and key for p in m.programs[key].parameters())
        other = sum(p.numel() for m in self.switches() if not m.after and key for p in m.programs[key].parameters())
        head = sum(p.numel() for p in self.heads[key].parameters()) if key else 0
        pct = lambda n: 100.0 * n / max(backbone, 1)  # noqa: E731
        return {
            "backbone": backbone,
            "reprogram_conv": convs,
            "norm_or_copies": other,
            "head": head,
            "pct_conv": pct(convs),
            "pct_conv_norm": pct(convs + other),
            "pct_with_head": pct(convs + other + head),
        }

    def state_for_checkpoint(self):
        return {
            "tasks": list(self.heads.keys()),
            "current": self.current,
            "anchor_ready": self.anchor_ready,
            "task_seeds": dict(self.task_seeds),
            "anchor_task": self.anchor_task,
        }

    def load_checkpoint_state(self, state):
        for key in state.get("tasks", []):
            if key not in self.heads:
                self.add_task(key)
        self.current, self.anchor_ready = state.get("current"), bool(state.get("anchor_ready", self.anchor_ready))
        self.task_seeds, self.anchor_task = dict(state.get("task_seeds", {})), state.get("anchor_task")
        self.requires_grad_(False)
