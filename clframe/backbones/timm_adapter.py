"""Any timm model as a clframe backbone (``backbone=timm backbone.model=resnet18``).

The timm classifier is removed (``num_classes=0``): ``forward_features`` returns timm's pooled
pre-logits features and ``num_features`` is timm's ``num_features``; the head stays with the
strategy. Weights are never downloaded: ``pretrained_path`` loads a local file
(``.pth`` / ``.pt`` / ``.bin`` state dict or ``.safetensors``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from clframe.backbones.simple import Backbone
from clframe.errors import ConfigError
from clframe.registry import register_backbone


def load_state(path: Path) -> dict[str, Tensor]:
    """A state dict from a local ``.safetensors`` or torch file (a ``state_dict`` / ``model`` entry is unwrapped)."""
    if not path.is_file():
        raise ConfigError("backbone.pretrained_path", str(path), hint="file not found")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    return state


@register_backbone("timm")
class TimmBackbone(Backbone):
    """A timm model by name, classifier removed; ``pretrained_path`` loads local weights (never downloads)."""

    def __init__(
        self,
        input_shape: Sequence[int],
        model: str = "resnet18",
        pretrained: bool = False,
        pretrained_path: str | None = None,
        model_kwargs: dict[str, Any] | None = None,
    ):
        super().__init__()
        import timm

        if not timm.is_model(model):
            close = timm.list_models(f"*{model}*")[:20] or timm.list_models()[:20]
            raise ConfigError("backbone.model", model, close, hint="see timm.list_models('*pattern*')")
        if pretrained and not pretrained_path:
            raise ConfigError(
                "backbone.pretrained",
                pretrained,
                hint="clframe never downloads weights: set backbone.pretrained_path=<local weights file>",
            )
        self.net = timm.create_model(
            model, pretrained=False, num_classes=0, in_chans=int(input_shape[0]), **dict(model_kwargs or {})
        )
        self.num_features = int(self.net.num_features)
        self.model_name = model
        if pretrained_path:
            self.load_pretrained(Path(pretrained_path).expanduser())

    def load_pretrained(self, path: Path) -> None:
        """Load backbone weights; classifier weights in the file are ignored, any other mismatch is an error."""
        own = self.net.state_dict()
        state = {k: v for k, v in load_state(path).items() if k in own and v.shape == own[k].shape}
        missing = sorted(set(own) - set(state))
        if missing:
            raise ConfigError(
                "backbone.pretrained_path",
                str(path),
                hint=f"weights do not fit timm model {self.model_name!r}: {len(missing)} tensors missing or "
                f"of another shape, e.g. {missing[:5]}",
            )
        self.net.load_state_dict(state)

    def forward_features(self, x: Tensor) -> Tensor:
        return self.net(x)  # num_classes=0: timm returns the pooled pre-logits features
