"""HyperInterval / HINT (Krukowski et al. 2024): a hypernetwork maps interval task embeddings to
interval weights of a target network; interval bound propagation (IBP) carries the intervals."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clframe.backbones.simple import in_weight_dtype
from clframe.errors import ConfigError
from clframe.registry import register_strategy
from clframe.strategies.hypernet import box_intersection, hnet_box, hyperfan_in_init, interval_loss
from clframe.strategies.intervals import forward_point, ibp, leaf_layers, mlp, param_shapes, unflatten
from clframe.strategy import MASK_VALUE, Capabilities, Strategy


@register_strategy("hyperinterval")
class HyperInterval(Strategy):
    """Target network = the configured backbone + head (plain Linear/Conv + ReLU/pooling), whose
    weights are *generated*: task ``t`` has an embedding box ``c_t ± epsilon * softmax(rho_t)``; the
    hypernetwork (an MLP) maps it by IBP to a weight box ``[W_lo, W_hi]``, and IBP through the target
    gives logit bounds. Loss (authors' code): ``kappa (CE(mid) + CE(lo) + CE(hi)) + (1 - kappa) CE(worst)``,
    epsilon ramped up from 0 and kappa down from 1 over the first ``warmup`` of the steps; plus ``beta`` x the
    squared change of the hypernetwork's outputs for earlier embeddings (bounds too if ``reg_bounds``),
    averaged over earlier tasks and divided by their number, as in the authors' code. Earlier
    embeddings are frozen. Inference: the weight-box midpoint of the task's embedding box.
    ``universal=True`` keeps each new centre inside the intersection of the earlier boxes (projection
    after every step), so all boxes share a region; ``inference="universal"`` then evaluates one
    network, generated once per experience from the centre of the intersection (no hypernetwork at test
    time). ``rho`` adds the authors' soft pull of the new centre towards earlier ones.
    ``fan_in_init`` (our choice, not in the paper): the hypernetwork's output layer is initialised so that the
    generated target network starts at He scale (``strategies.hypernet.hyperfan_in_init``)."""

    capabilities = Capabilities(settings=("task",), needs_task_id=True)  # one embedding per task id
    derived_state = {"targets": "recomputed at the next learn experience from the unlearned hypernetwork"}

    def __init__(
        self,
        *args,
        embedding_dim: int = 24,
        hnet_hidden: tuple[int, ...] = (100,),
        epsilon: float = 5.0,
        kappa: float = 0.5,
        kappa_decay: float | None = None,
        warmup: float = 0.5,
        beta: float = 0.05,
        reg_bounds: bool = True,
        rho: float = 0.0,
        custom_init: bool = False,
        universal: bool = False,
        inference: str = "task",
        fan_in_init: bool = True,
        **kwargs,
    ):
        kwargs.setdefault("optimizer", "adam")
        super().__init__(*args, **kwargs)
        if inference not in ("task", "universal"):
            raise ConfigError("strategy.inference", inference, ["task", "universal"])
        if epsilon < 0:
            raise ConfigError("strategy.epsilon", epsilon, "a non-negative number")
        self.epsilon, self.kappa, self.kappa_decay, self.warmup, self.beta = epsilon, kappa, kappa_decay, warmup, beta
        self.reg_bounds, self.rho, self.custom_init, self.universal = reg_bounds, rho, custom_init, universal
        self.inference, self.embedding_dim = inference, embedding_dim
        self.layers = [*leaf_layers(self.backbone), self.head]  # structure only: weights come from the hypernetwork
        self.requires_grad_(False)
        self.shapes = param_shapes(self.layers)
        self.n_weights = sum(math.prod(s) for layer in self.shapes for s in layer)
        self.hnet = mlp([embedding_dim, *hnet_hidden, self.n_weights])
        if fan_in_init:
            hyperfan_in_init(self.hnet, self.shapes, embedding_dim)
        self.centres, self.radii = nn.ParameterDict(), nn.ParameterDict()
        self.register_buffer("universal_weights", torch.zeros(self.n_weights))
        self.register_buffer("universal_empty_dims", torch.zeros((), dtype=torch.long))
        self.current: str | None = None
        self.targets: Tensor | None = None  # (3, n_prev, n_weights): lo / mid / hi before this experience

    # ---------------------------------------------------------------- intervals
    def embedding_box(self, keys: list[str], eps: float) -> tuple[Tensor, Tensor]:
        c = torch.stack([self.centres[k] for k in keys])
        r = eps * torch.stack([F.softmax(self.radii[k], -1) for k in keys])
        return c - r, c + r

    def weight_box(self, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
        """Embedding boxes (T, d) -> target-network weight boxes (T, n_weights)."""
        return hnet_box(self.hnet, lo, hi)

    def unflatten(self, flat: Tensor) -> list[list[Tensor]]:
        return unflatten(flat, self.shapes)

    def target_bounds(self, x: Tensor, w_lo: Tensor, w_hi: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        lo, hi = ibp(self.layers, x, x, self.unflatten(w_lo), self.unflatten(w_hi))
        return lo, forward_point(self.layers, x, self.unflatten((w_lo + w_hi) / 2)), hi

    # ---------------------------------------------------------------- training
    def schedule(self) -> tuple[float, float]:
        """(epsilon, kappa) now: epsilon ramps up linearly over the warmup; kappa decays linearly from 1 to
        ``kappa`` over the warmup, or by ``kappa_decay`` per step if set (authors' code: 5e-5)."""
        total, step = max(1, self.steps_per_experience), self.step_in_experience
        progress = min(1.0, step / max(1.0, self.warmup * total))
        decay = self.kappa_decay * step if self.kappa_decay is not None else progress * (1 - self.kappa)
        return self.epsilon * progress, max(1 - decay, self.kappa)

    def training_loss(self, batch):
        x, y, mask = in_weight_dtype(self, batch["x"]), batch["y"], ~self.class_mask(batch["task"])
        eps, kappa = self.schedule()
        w_lo, w_hi = self.weight_box(*self.embedding_box([self.current], eps))
        loss = interval_loss(*self.target_bounds(x, w_lo[0], w_hi[0]), y, mask, kappa)
        prev = [k for k in self.centres.keys() if k != self.current]
        if prev and self.targets is not None:
            lo, hi = self.weight_box(*self.embedding_box(prev, self.epsilon))
            now = torch.stack([lo, (lo + hi) / 2, hi]) if self.reg_bounds else ((lo + hi) / 2)[None]
            target = self.targets.to(now) if self.reg_bounds else self.targets[1:2].to(now)
            loss = loss + self.beta * (now - target).pow(2).sum((0, 2)).mean() / len(prev)
            if self.rho:
                c_prev, r_prev = (
                    torch.stack([self.centres[k] for k in prev]),
                    self.epsilon * torch.stack([F.softmax(self.radii[k], -1) for k in prev]),
                )
                loss = loss + self.rho * ((self.centres[self.current] - c_prev) / (r_prev + 1e-10)).pow(2).sum()
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx):
        prev = [k for k in self.centres.keys() if k != self.current]
        if self.universal and prev:  # keep the new centre inside every earlier box
            lo, hi = self.embedding_box(prev, self.epsilon)
            with torch.no_grad():
                self.centres[self.current].copy_(
                    torch.minimum(torch.maximum(self.centres[self.current], lo.max(0).values), hi.min(0).values)
                )

    def before_experience(self, exp):
        super().before_experience(exp)
        self.current, prev = str(exp.task_id), list(self.centres.keys())
        for p in (*self.centres.values(), *self.radii.values()):
            p.requires_grad_(False)  # earlier embeddings are fixed for good
        if self.current not in self.centres:
            dev, start = self.universal_weights.device, self.custom_init and prev
            c = self.centres[prev[-1]].detach().clone() if start else torch.randn(self.embedding_dim)
            self.centres[self.current] = nn.Parameter(c.to(dev))
            self.radii[self.current] = nn.Parameter(torch.rand(self.embedding_dim).to(dev))
        self.centres[self.current].requires_grad_(True)
        self.radii[self.current].requires_grad_(True)
        prev = [k for k in self.centres.keys() if k != self.current]
        self.targets = None
        if prev:
            with torch.no_grad():
                lo, hi = self.weight_box(*self.embedding_box(prev, self.epsilon))
                self.targets = torch.stack([lo, (lo + hi) / 2, hi]).detach()

    @torch.no_grad()
    def after_experience(self, exp):
        lo, hi, n_empty = box_intersection(*self.embedding_box(list(self.centres.keys()), self.epsilon))
        self.universal_empty_dims.fill_(n_empty)
        self.universal_weights.copy_(self.weight_box(((lo + hi) / 2)[None], ((lo + hi) / 2)[None])[0][0])

    # ---------------------------------------------------------------- inference
    def forward(self, x: Tensor, task: Tensor | None = None) -> Tensor:
        if not len(self.centres):
            return super().forward(x, task)
        if task is None:
            task = torch.full((len(x),), int(self.current), device=x.device, dtype=torch.long)
        if self.inference == "universal":
            out = forward_point(self.layers, x, self.unflatten(self.universal_weights))
        else:
            out = x.new_zeros(len(x), self.n_classes)
            for t in task.unique().tolist():
                key = str(t) if str(t) in self.centres else self.current
                lo, hi = self.weight_box(*self.embedding_box([key], self.epsilon))
                rows = task == t
                out[rows] = forward_point(self.layers, x[rows], self.unflatten((lo[0] + hi[0]) / 2))
        return out.masked_fill(~self.class_mask(task), MASK_VALUE)

    def state_for_checkpoint(self):
        return {"tasks": list(self.centres.keys()), "current": self.current}

    def load_checkpoint_state(self, state):
        for key in state.get("tasks", []):
            self.centres[key] = nn.Parameter(torch.zeros(self.embedding_dim), requires_grad=False)
            self.radii[key] = nn.Parameter(torch.zeros(self.embedding_dim), requires_grad=False)
        self.current = state.get("current")
