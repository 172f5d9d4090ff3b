"""LoRA fine-tuning baselines: sequential (lower bound) and joint (upper bound)."""

from __future__ import annotations

from collections.abc import Sequence

from clframe.registry import register_strategy
from clframe.stores import DataStore
from clframe.strategies.lora import ensure_lora, lora_layers
from clframe.strategy import Strategy
from clframe.stream import Experience, TensorData, TensorLoader


@register_strategy("lora_finetune")
class LoRAFinetune(Strategy):
    """Frozen (pretrained) backbone + one LoRA set on the ``targets`` linears, trained with the
    head by cross-entropy on the seen classes, continued from experience to experience.
    LoRA is added at the first experience, i.e. *after* an optional pretraining stage trained the
    full backbone. ``joint=True``: train on the union of all data so far (upper bound; stores data)."""

    def __init__(
        self,
        *args,
        rank: int = 4,
        alpha: float = 8.0,
        targets: Sequence[str] | None = None,
        joint: bool = False,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.lora = {"rank": rank, "alpha": alpha, "targets": None if targets is None else tuple(targets)}
        self.joint = joint
        self.past = self.register_store("past", DataStore())  # joint=True only: earlier experiences' data

    def before_experience(self, exp: Experience) -> None:
        ensure_lora(self.backbone, **self.lora)
        super().before_experience(exp)

    def train_dataloader_for(self, exp: Experience) -> TensorLoader:
        data = TensorData.concat([*self.past.parts, exp.train]) if self.joint else exp.train
        return TensorLoader(data, self.batch_size, shuffle=True, seed=self.seed, transform=exp.transform)

    def after_experience(self, exp: Experience) -> None:
        if self.joint:
            self.past.add(exp.train)

    def state_for_checkpoint(self) -> dict:
        return {"has_lora": next(lora_layers(self.backbone), None) is not None}

    def load_checkpoint_state(self, state: dict) -> None:
        if state.get("has_lora"):
            ensure_lora(self.backbone, **self.lora)  # the state dict then fills the adapters
