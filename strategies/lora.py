"""Low-rank adapters (LoRA, Hu et al. 2022) for the ``nn.Linear`` layers of any backbone.

``W x + sum_a c_a * (alpha / r) * B_a A_a x`` with a frozen base weight ``W`` and one or more
named adapter sets ``a`` (``A_a``: r x in, ``B_a``: out x r, ``B`` starts at zero so a new set
is a no-op). ``c_a`` is a per-layer coefficient (a float, or a tensor to *learn* a merge of two
sets). ``merge``/``unmerge`` fold a set into ``W`` and back (up to float rounding).

We use our own ~100-line module rather than peft: peft wraps timm's ``qkv``/``proj`` linears
fine, but keeps adapter scales as Python floats and renames state-dict keys; LoRA-merging
methods (DESIRE) need differentiable per-layer coefficients on two adapter sets.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor, nn

from clframe.errors import ConfigError


class LoRALinear(nn.Module):
    """An ``nn.Linear`` with frozen base weights and named low-rank adapter sets."""

    def __init__(self, base: nn.Linear, *, rank: int = 4, alpha: float = 8.0, adapters: Sequence[str] = ("default",)):
        super().__init__()
        if rank <= 0:
            raise ValueError(f"LoRA rank must be positive, got {rank}")
        self.base, self.rank, self.scaling = base, rank, alpha / rank
        for p in base.parameters():
            p.requires_grad_(False)
        self.lora_A, self.lora_B = nn.ParameterDict(), nn.ParameterDict()
        self.coef: dict[str, float | Tensor] = {}
        self.merged: list[str] = []
        for name in adapters:
            self.add_adapter(name)

    def add_adapter(self, name: str, rank: int | None = None) -> None:
        """A new set (rank ``rank``, default the layer's): ``A`` Kaiming-uniform, ``B`` zero (no-op)."""
        w, r = self.base.weight, rank or self.rank
        a = torch.empty(r, w.shape[1], device=w.device, dtype=w.dtype)
        nn.init.kaiming_uniform_(a, a=math.sqrt(5))
        self.lora_A[name] = nn.Parameter(a)
        self.lora_B[name] = nn.Parameter(torch.zeros(w.shape[0], r, device=w.device, dtype=w.dtype))
        self.coef[name] = 1.0

    def reset_adapter(self, name: str) -> None:
        with torch.no_grad():
            nn.init.kaiming_uniform_(self.lora_A[name], a=math.sqrt(5))
            self.lora_B[name].zero_()

    @torch.no_grad()
    def set_delta(self, name: str, delta: Tensor) -> None:
        """Write the best approximation of ``delta`` (truncated SVD, Eckart-Young) at this set's
        rank into ``B``, ``A`` (shapes unchanged), with coefficient 1."""
        r = self.lora_A[name].shape[0]
        u, s, vh = torch.linalg.svd((delta / self.scaling).float(), full_matrices=False)
        k = min(r, len(s))
        root = s[:k].sqrt()
        self.lora_A[name].zero_()[:k] = (root[:, None] * vh[:k]).to(self.lora_A[name].dtype)
        self.lora_B[name].zero_()[:, :k] = (u[:, :k] * root).to(self.lora_B[name].dtype)
        self.coef[name] = 1.0

    def delta(self, name: str) -> Tensor:
        """Dense weight update ``c * (alpha / r) * B A`` of one set."""
        return self.coef[name] * self.scaling * (self.lora_B[name] @ self.lora_A[name])

    def forward(self, x: Tensor) -> Tensor:
        y = self.base(x)
        for name, a in self.lora_A.items():
            c = self.coef[name]
            if name in self.merged or (isinstance(c, float) and c == 0.0):
                continue
            y = y + (c * self.scaling) * ((x @ a.t()) @ self.lora_B[name].t())
        return y

    @torch.no_grad()
    def merge(self, name: str = "default") -> None:
        """Fold a set into the base weight (faster inference; the set is skipped in ``forward``)."""
        if name not in self.merged:
            self.base.weight += self.delta(name).detach()
            self.merged.append(name)

    @torch.no_grad()
    def unmerge(self, name: str = "default") -> None:
        if name in self.merged:
            self.base.weight -= self.delta(name).detach()
            self.merged.remove(name)


ATTENTION_TARGETS = ("*.qkv", "*.proj")


def add_lora(
    module: nn.Module,
    *,
    targets: Sequence[str] | None = None,
    rank: int = 4,
    alpha: float = 8.0,
    adapters: Sequence[str] = ("default",),
) -> list[str]:
    """Replace every ``nn.Linear`` whose qualified name matches a glob in ``targets`` by a
    :class:`LoRALinear` (in place); freeze all other parameters of ``module``. Returns the names.
    ``targets=None``: the attention projections (``*.qkv``, ``*.proj``) if any, else every linear."""
    linears = [n for n, m in module.named_modules() if isinstance(m, nn.Linear)]
    pick = lambda globs: [n for n in linears if any(fnmatch.fnmatch(n, t) for t in globs)]  # noqa: E731
    names = pick(targets) if targets is not None else (pick(ATTENTION_TARGETS) or linears)
    if not names:
        raise ConfigError("strategy.targets", list(targets or []), linears[:12], hint="no nn.Linear matches them")
    for p in module.parameters():
        p.requires_grad_(False)
    for name in names:
        owner, _, attr = name.rpartition(".")
        parent = module.get_submodule(owner) if owner else module
        setattr(parent, attr, LoRALinear(getattr(parent, attr), rank=rank, alpha=alpha, adapters=adapters))
    return names


def ensure_lora(module: nn.Module, **kwargs) -> bool:
    """:func:`add_lora` unless ``module`` already has LoRA layers; True if it added them."""
    if any(True for _ in lora_layers(module)):
        return False
    add_lora(module, **kwargs)
    return True


def lora_layers(module: nn.Module) -> Iterator[LoRALinear]:
    return (m for m in module.modules() if isinstance(m, LoRALinear))


def set_coef(module: nn.Module, name: str, value: float) -> None:
    """Set the coefficient of adapter set ``name`` in every LoRA layer (0 disables it)."""
    for layer in lora_layers(module):
        layer.coef[name] = value


def lora_parameters(module: nn.Module, name: str) -> list[nn.Parameter]:
    return [p for layer in lora_layers(module) for p in (layer.lora_A[name], layer.lora_B[name])]
