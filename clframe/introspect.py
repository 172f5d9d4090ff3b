"""Forward-hook capture of a model's intermediate activations (CKA, probes, RepNoise's per-layer terms)."""

from __future__ import annotations

from contextlib import contextmanager

from torch import Tensor, nn

from clframe.errors import ConfigError

ACTIVATIONS = (nn.ReLU, nn.GELU, nn.SiLU, nn.Tanh, nn.LeakyReLU, nn.ELU)


def activation_layers(module: nn.Module) -> list[str]:
    """Names of the activation modules (ReLU, GELU, ...) in ``module``: the layers used for CKA and RepNoise."""
    return [name for name, m in module.named_modules() if is_activation(m)]


def is_activation(m: nn.Module) -> bool:
    """torch's activation modules, and Hugging Face's (``transformers.activations``: Llama's ``SiLUActivation``,
    GPT-2's ``NewGELUActivation``), which are plain ``nn.Module`` subclasses."""
    return isinstance(m, ACTIVATIONS) or type(m).__module__ == "transformers.activations"


@contextmanager
def capture(module: nn.Module, names: list[str]):
    """Record the outputs of the named sub-modules (flattened per sample) during the forward passes inside."""
    acts: dict[str, Tensor] = {}
    mods = dict(module.named_modules())
    missing = [n for n in names if n not in mods]
    if missing:
        raise ConfigError("layers", missing, sorted(n for n in mods if n))
    hooks = [mods[n].register_forward_hook(lambda _m, _i, out, n=n: acts.__setitem__(n, out.flatten(1))) for n in names]
    try:
        yield acts
    finally:
        for h in hooks:
            h.remove()


@contextmanager
def capture_io(module: nn.Module, names: list[str]):
    """Record ``(input, output)`` of the named sub-modules, unflattened, during the forward passes inside:
    ``acts[name]`` is a list with one pair per call (a strategy may call a layer more than once per
    forward, e.g. once per task group). The input is cloned before the module runs, so an in-place
    activation cannot overwrite it; both keep their autograd graph."""
    acts: dict[str, list[tuple[Tensor, Tensor]]] = {n: [] for n in names}
    pending: dict[str, Tensor] = {}
    mods = dict(module.named_modules())
    missing = [n for n in names if n not in mods]
    if missing:
        raise ConfigError("layers", missing, sorted(n for n in mods if n))

    def pre(name):
        return lambda _m, inp: pending.__setitem__(name, inp[0].clone())

    def post(name):
        return lambda _m, _i, out: acts[name].append((pending.pop(name), out))

    hooks = [mods[n].register_forward_pre_hook(pre(n)) for n in names]
    hooks += [mods[n].register_forward_hook(post(n)) for n in names]
    try:
        yield acts
    finally:
        for h in hooks:
            h.remove()
