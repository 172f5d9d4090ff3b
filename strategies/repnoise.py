"""RepNoise (Rosati et al. 2024): remove the forget set's information at every depth, not just the head.

Loss = retain cross-entropy − ``ascent_weight``·log(1 + forget cross-entropy)
       + ``noise_weight``·mean over layers of MMD(forget activations at the layer, Gaussian noise).
The ascent is log-damped as in the authors' implementation, so it cannot run away.
The MMD term pushes the forget samples' representations at several layers (the backbone's
activation modules by default) towards N(0, I), so a relearning attack has less to start from.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from clframe.registry import register_unlearner
from strategies.unlearning import Unlearner
from strategies.unlearning_pieces import activation_layers, capture, gaussian_mmd


@register_unlearner("repnoise")
class RepNoise(Unlearner):
    """Ascent on forget + retain loss + MMD pulling forget representations (all layers) to noise."""

    def __init__(
        self, *, ascent_weight: float = 1.0, noise_weight: float = 4.0, layers: list[str] | None = None, **kwargs
    ):
        super().__init__(**kwargs)
        self.ascent_weight, self.noise_weight, self.layers = ascent_weight, noise_weight, layers

    def setup(self, strategy, exp):
        self.names = list(self.layers) if self.layers else activation_layers(strategy.backbone)

    def loss(self, strategy, forget, retain):
        x, y, task = forget["x"], forget["y"], forget["task"]
        with capture(strategy.backbone, self.names) as acts:
            logits = strategy(x, task)
        noise = sum(gaussian_mmd(a, torch.randn_like(a)) for a in acts.values()) / max(1, len(acts))
        ascent = -torch.log1p(F.cross_entropy(logits, y))
        return self.ascent_weight * ascent + self.noise_weight * noise + self.retain_loss(strategy, retain)
