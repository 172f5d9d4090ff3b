"""Per-task module routing ("reprogramming") around a frozen backbone, by module replacement.

Every matching layer of any backbone is replaced by a :class:`TaskSwitch` that holds the frozen
original (the anchor) and one small module per task; a shared :class:`Router` says which task is
active. Used by CLR (depthwise identity-initialised convs after each conv, per-task norm copies).
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

NORMS = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)


class Router:
    """Which task's programs the wrapped layers use (``None``: the anchor alone)."""

    task: str | None = None


def depthwise_identity(conv: nn.Conv2d, kernel_size: int) -> nn.Conv2d:
    """Per-channel ``k x k`` conv (groups = channels) that starts as the identity map."""
    c = conv.out_channels
    dw = nn.Conv2d(c, c, kernel_size, padding=kernel_size // 2, groups=c, bias=False)
    nn.init.dirac_(dw.weight, groups=c)
    return dw


class TaskSwitch(nn.Module):
    """Frozen ``anchor`` + one module per task: ``program(anchor(x))`` if ``after`` else ``program(x)``."""

    def __init__(self, anchor: nn.Module, router: Router, make, after: bool):
        super().__init__()
        self.anchor, self.router, self.make, self.after = anchor, router, make, after
        self.programs = nn.ModuleDict()

    def add_task(self, key: str) -> None:
        device = next(self.anchor.parameters(), torch.empty(0)).device
        self.programs[key] = self.make(self.anchor).to(device).requires_grad_(True)

    def forward(self, x: Tensor) -> Tensor:
        key = self.router.task
        if key is None:
            return self.anchor(x)
        return self.programs[key](self.anchor(x)) if self.after else self.programs[key](x)


def wrap(module: nn.Module, router: Router, *, kernel_size: int, reprogram: str, skip_pointwise: bool) -> None:
    """Replace convs / norms (``reprogram="full"``: every leaf with parameters) by :class:`TaskSwitch`."""
    for name, child in module.named_children():
        leaf = not list(child.children()) and any(True for _ in child.parameters())
        if reprogram == "full" and leaf:
            setattr(module, name, TaskSwitch(child, router, copy.deepcopy, after=False))
        elif isinstance(child, nn.Conv2d) and not (skip_pointwise and child.kernel_size == (1, 1)):
            make = lambda conv, k=kernel_size: depthwise_identity(conv, k)  # noqa: E731
            setattr(module, name, TaskSwitch(child, router, make, after=True))
        elif isinstance(child, NORMS):
            setattr(module, name, TaskSwitch(child, router, copy.deepcopy, after=False))
        else:
            wrap(child, router, kernel_size=kernel_size, reprogram=reprogram, skip_pointwise=skip_pointwise)
