"""A small Vision Transformer for small images (32x32 CIFAR, 28x28 MNIST, 8x8 digits), built
with timm's ``VisionTransformer``. Weights are random unless ``pretrained_path`` names a local
file (clframe never downloads); pretrain inside the framework with ``cfg.pretrain``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from clframe.backbones.simple import Backbone
from clframe.errors import ConfigError
from clframe.registry import register_backbone


@register_backbone("vit")
class ViT(Backbone):
    """timm ViT (CLS-token pooling, final LayerNorm) over ``input_shape``; ``forward_features``
    returns the pooled (N, ``width``) feature. Defaults: patch 4, depth 6, width 192, 3 heads
    (ViT-Tiny width; 2.7 M parameters on 32x32x3).

    Args:
        input_shape: (C, H, W) of the stream; H and W must be multiples of ``patch_size``.
        pretrained_path: local state dict (this backbone's, or a timm ViT's with the same shape).
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        *,
        patch_size: int = 4,
        depth: int = 6,
        width: int = 192,
        heads: int = 3,
        mlp_ratio: float = 4.0,
        drop_path: float = 0.0,
        pretrained_path: str | None = None,
    ):
        super().__init__()
        from timm.models.vision_transformer import VisionTransformer

        c, h, w = input_shape
        if h % patch_size or w % patch_size:
            raise ConfigError("backbone.patch_size", patch_size, f"a divisor of the input size {h}x{w}")
        if width % heads:
            raise ConfigError("backbone.heads", heads, f"a divisor of width={width}")
        self.vit = VisionTransformer(
            img_size=(h, w),
            patch_size=patch_size,
            in_chans=c,
            num_classes=0,
            embed_dim=width,
            depth=depth,
            num_heads=heads,
            mlp_ratio=mlp_ratio,
            drop_path_rate=drop_path,
            global_pool="token",
        )
        self.num_features = width
        if pretrained_path:
            self.load_pretrained(pretrained_path)

    def forward_features(self, x: Tensor) -> Tensor:
        return self.vit.forward_head(self.vit.forward_features(x), pre_logits=True)

    def load_pretrained(self, path: str) -> None:
        """Load a local state dict (keys with or without the ``vit.`` prefix; a classifier head is ignored)."""
        file = Path(path).expanduser()
        if not file.is_file():
            raise ConfigError(
                "backbone.pretrained_path",
                str(path),
                "an existing local weights file",
                hint="clframe never downloads weights",
            )
        state = torch.load(file, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state.get("model", state))
        state = {k.removeprefix("backbone.").removeprefix("vit."): v for k, v in state.items()}
        state = {k: v for k, v in state.items() if not k.startswith("head.")}
        missing, unexpected = self.vit.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ConfigError(
                "backbone.pretrained_path",
                str(path),
                "weights of a ViT with this configuration",
                hint=f"missing keys {missing[:5]}, unexpected keys {unexpected[:5]}",
            )
