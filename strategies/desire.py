"""DESIRE (Guo et al. 2024): rehearsal-free CL with LoRA merging, dynamic representation
consolidation and decision-boundary refinement. See docs/methods.md#desire for the equations."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from clframe.errors import ConfigError
from clframe.fit import Engine
from clframe.optim import make_optimizer
from clframe.registry import register_strategy
from clframe.strategies.feature_stats import ClassGaussians, consolidation_kl, extract_features, refine_head
from clframe.strategies.lora import add_lora, lora_layers, set_coef
from clframe.strategy import MASK_VALUE, Strategy

OLD, NEW = "old", "new"
CONSOLIDATION_LOSSES = ("gaussian", "features")


@register_strategy("desire")
class DESIRE(Strategy):
    """Per experience, a fresh LoRA set ``new`` is trained on the frozen base weights with plain
    cross-entropy over the new classes only (no anti-forgetting term). Afterwards it is merged
    with the consolidated set ``old`` (only these two sets exist): ``dW = a_l dW_old + b_l dW_new``
    per layer ``l``; with ``consolidate`` the coefficients are learned on the per-class feature
    Gaussians (``consolidation_loss="gaussian"``): the merged model's Gaussians of the new classes
    should match the new model's (KL) and the stored old-class Gaussians should not drift (KL of the
    drift-transported Gaussian, weight ``stability``, ``"auto"`` = #old / #new classes, i.e. every
    class weighs the same); ``"features"`` (ablation) matches per-sample features of the current data
    to both models instead (see docs/methods.md#desire: our reconstruction, the paper's loss is not
    public). The stored old-class means are then moved by the measured feature drift. Per-class feature
    Gaussians (no images) are then updated and, with ``refine``, the head is retrained on features
    sampled from all seen classes' Gaussians.
    ``merge=False`` keeps one LoRA set trained sequentially (the "LoRA + refinement" baseline).

    Forget requests (answered by the configured unlearner): :meth:`after_forget` drops the Gaussians of
    the request's ``removed_classes``, so no later refinement samples them; see :attr:`derived_state`."""

    derived_state = {
        "class_gaussians": (
            "removed classes dropped (no later head refinement samples them); the Gaussians of classes that keep"
            " samples are kept as computed, with the forgotten samples and the model before unlearning"
        ),
        "lora_sets": (
            "kept: the merged 'old' LoRA set and its merge coefficients were trained on the forgotten samples"
            " (only the unlearner changes them)"
        ),
    }

    def __init__(
        self,
        *args,
        rank: int = 4,
        alpha: float = 8.0,
        targets: Sequence[str] | None = None,
        merged_rank: int | None = None,
        merge: bool = True,
        consolidate: bool = True,
        refine: bool = True,
        stability: float | str = "auto",
        consolidation_steps: int = 20,
        consolidation_lr: float = 0.05,
        consolidation_samples: int = 128,
        consolidation_loss: str = "gaussian",
        covariance: str = "full",
        shrink: float = 1e-3,
        refine_samples: int = 256,
        refine_epochs: int = 10,
        refine_lr: float = 1e-3,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        if stability != "auto" and float(stability) < 0:
            raise ConfigError("strategy.stability", stability, "'auto' or a non-negative number")
        if consolidation_loss not in CONSOLIDATION_LOSSES:
            raise ConfigError("strategy.consolidation_loss", consolidation_loss, CONSOLIDATION_LOSSES)
        self.lora = {"rank": rank, "alpha": alpha, "targets": None if targets is None else tuple(targets)}
        self.merged_rank = merged_rank or 2 * rank
        self.merge, self.consolidate, self.refine, self.stability = merge, consolidate, refine, stability
        self.steps, self.cons_lr, self.cons_samples = consolidation_steps, consolidation_lr, consolidation_samples
        self.cons_loss = consolidation_loss
        self.stats = ClassGaussians(covariance, shrink)
        self.refine_samples, self.refine_epochs, self.refine_lr = refine_samples, refine_epochs, refine_lr
        self.n_merged = 0  # experiences folded into the "old" set
        self.new_classes: list[int] = []

    def add_adapters(self) -> None:
        add_lora(self.backbone, adapters=(NEW,), **self.lora)
        for layer in lora_layers(self.backbone):
            if self.merge:
                layer.add_adapter(OLD, rank=self.merged_rank)
                layer.lora_A[OLD].requires_grad_(False)
                layer.lora_B[OLD].requires_grad_(False)

    def before_experience(self, exp):
        if next(lora_layers(self.backbone), None) is None:
            self.add_adapters()
        if self.merge:  # decoupled: the new set starts from zero on the frozen base weights
            for layer in lora_layers(self.backbone):
                layer.reset_adapter(NEW)
                layer.coef.update({OLD: 0.0, NEW: 1.0})
        self.new_classes = list(exp.classes)
        super().before_experience(exp)

    def training_loss(self, batch):
        logits = self.logits(batch["x"])
        mask = torch.zeros(self.n_classes, dtype=torch.bool, device=logits.device)
        mask[self.new_classes] = True
        return F.cross_entropy(logits.masked_fill(~mask, MASK_VALUE), batch["y"])

    def after_experience(self, exp):
        gen = torch.Generator().manual_seed(self.seed)
        if self.merge:
            self.merge_sets(exp, gen)
        self.stats.update(extract_features(self, exp.train), exp.train.y)
        if self.refine:
            refine_head(
                self.head,
                self.stats,
                n_per_class=self.refine_samples,
                epochs=self.refine_epochs,
                lr=self.refine_lr,
                generator=gen,
                engine=self.engine,
            )
        self.experience = None  # hold no reference to the experience's data

    def merge_sets(self, exp, gen: torch.Generator) -> None:
        """Fold ``new`` into ``old`` (learned or fixed per-layer coefficients), then disable ``new``."""
        layers = list(lora_layers(self.backbone))
        if self.n_merged:
            idx = torch.randperm(len(exp.train), generator=gen)[: self.cons_samples]
            probe = exp.train.subset(idx)
            f_old, f_new = self.features_with(probe, 1.0, 0.0), self.features_with(probe, 0.0, 1.0)
            if self.consolidate:
                self.learn_coefficients(layers, probe.x, self.consolidation_objective(exp, probe, f_old, f_new))
                self.stats.shift_means(f_old, self.features_with(probe, None, None))
            else:
                set_coef(self.backbone, OLD, 1.0)  # task arithmetic
                set_coef(self.backbone, NEW, 1.0)
        for layer in layers:
            merged = layer.delta(NEW) + (layer.delta(OLD) if self.n_merged else 0.0)
            layer.set_delta(OLD, merged.detach())
            layer.reset_adapter(NEW)
            layer.coef.update({OLD: 1.0, NEW: 0.0})
        self.n_merged += 1

    def features_with(self, data, c_old: float | None, c_new: float | None):
        if c_old is not None:
            set_coef(self.backbone, OLD, c_old)
            set_coef(self.backbone, NEW, c_new)
        return extract_features(self, data)

    def consolidation_objective(self, exp, probe, f_old, f_new):
        """The loss of the merged features ``f`` of ``probe`` that the merge coefficients minimise."""
        n_old = int(self.seen.sum()) - len(self.new_classes)
        lam = n_old / max(len(self.new_classes), 1) if self.stability == "auto" else float(self.stability)
        dev = self.head.weight.device
        f_old, f_new = f_old.to(dev), f_new.to(dev)
        if self.cons_loss == "features":  # per-sample feature matching to both models (ablation)
            scale = f_new.pow(2).sum(1).mean().clamp_min(1e-8)
            return lambda f: ((f - f_new).pow(2).sum(1).mean() + lam * (f - f_old).pow(2).sum(1).mean()) / scale
        new_ref = ClassGaussians(self.stats.covariance, self.stats.shrink)  # new-only model, all current data
        new_ref.update(self.features_with(exp.train, 0.0, 1.0), exp.train.y)
        y = probe.y.to(dev)
        return lambda f: consolidation_kl(f, y, new_ref, f_old, self.stats, stability=lam)

    def learn_coefficients(self, layers, x, objective) -> None:
        """Dynamic representation consolidation: per-layer (a_l, b_l), initialised at 1 (task
        arithmetic), minimise ``objective(merged features of x)`` with Adam."""
        dev = self.head.weight.device
        coefs = torch.ones(len(layers), 2, device=dev, requires_grad=True)
        for i, layer in enumerate(layers):
            layer.coef.update({OLD: coefs[i, 0], NEW: coefs[i, 1]})
        opt = make_optimizer([coefs], "adam", lr=self.cons_lr)
        x = x.to(dev)
        was_training, frozen = self.training, [p for p in self.parameters() if p.requires_grad]
        self.eval().requires_grad_(False)
        with torch.enable_grad():
            engine = self.engine or Engine.default()
            engine.optimize(opt, range(self.steps), lambda _: objective(self.features(x)), desc="DESIRE coefficients")
        self.train(was_training)
        for p in frozen:
            p.requires_grad_(True)
        for i, layer in enumerate(layers):
            layer.coef.update({OLD: float(coefs[i, 0].detach()), NEW: float(coefs[i, 1].detach())})

    def after_forget(self, exp) -> None:
        self.stats.drop(exp.removed_classes)

    def state_for_checkpoint(self) -> dict:
        return {
            "stats": self.stats.state(),
            "n_merged": self.n_merged,
            "has_lora": next(lora_layers(self.backbone), None) is not None,
        }

    def load_checkpoint_state(self, state: dict) -> None:
        if state.get("has_lora"):
            self.add_adapters()  # the state dict then fills them
        self.stats.load(state.get("stats", {}))
        self.n_merged = int(state.get("n_merged", 0))
        for layer in lora_layers(self.backbone):
            layer.coef.update({OLD: 1.0, NEW: 0.0} if self.merge else {NEW: 1.0})
