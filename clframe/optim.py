"""The one optimiser builder and the one gradient step: :meth:`clframe.fit.Engine.optimize` (the loop of
every auxiliary optimisation: pretraining, the unlearners, CLR's rotation proxy, DESIRE's merge
coefficients, head refinement, the relearning attack) steps with :func:`gradient_step`; the stream's own
training goes through :mod:`clframe.fit`, which builds its optimiser here too."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

from clframe.errors import ConfigError

OPTIMIZERS = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}


def check_optimizer(key: str, name: str) -> None:
    """``ConfigError`` naming ``key`` unless ``name`` is a known optimiser."""
    if name not in OPTIMIZERS:
        raise ConfigError(key, name, sorted(OPTIMIZERS))


def make_optimizer(
    params: Iterable, name: str = "sgd", *, lr: float, momentum: float = 0.0, weight_decay: float = 0.0,
    key: str = "optimizer",
) -> torch.optim.Optimizer:  # fmt: skip
    """``OPTIMIZERS[name]`` over ``params``; ``momentum`` applies to SGD only."""
    check_optimizer(key, name)
    kwargs = {"lr": float(lr), "weight_decay": float(weight_decay)}
    if name == "sgd":
        kwargs["momentum"] = float(momentum)
    return OPTIMIZERS[name](list(params), **kwargs)


def gradient_step(opt: torch.optim.Optimizer, loss: Tensor, clip: float | None = None) -> None:
    """Zero the gradients, backpropagate ``loss``, clip the total gradient norm of the optimiser's
    parameters to ``clip`` (if set), step."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if clip:
        torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], clip)
    opt.step()
