"""The ``lm_loss`` evaluator: a causal LM's token-mean cross-entropy on named text sets after every event.

Enable with ``evaluators=[{name: lm_loss}]`` on a text stream. A set name is looked up in the stream's
``extras["text_sets"]`` (``scenario=lm_corpus``: ``base``, ``finetune``), then among its utility sets and
held-out authors (``fictitious_authors`` / ``tofu`` / ``text_jsonl``: ``world_facts``, ``holdout``, ...), then
``exp_<j>`` (the test split of learn experience ``j``); ``sets: null`` measures every set of ``text_sets`` (else
every utility / held-out set). The cross-entropy is over the tokens each sample's loss mask selects (a whole
document for ``lm_corpus``, the answer for question–answer pairs), pooled over the set: ``sum NLL / #tokens``,
which is Hugging Face's ``outputs.loss`` on the whole set as one batch (tested).

The run's model before its first event — ``context.new_strategy(None)``, built exactly as the run's was
(a ``backbone.path`` checkpoint with fresh LoRA adapters computes the checkpoint's function) — is measured first
and kept as the *initial* model. Keys per event (``metrics.json["evaluations"]``):

* ``<set>/ce`` — cross-entropy against the data; ``<set>/forgetting`` — its increase since the initial model;
* ``<set>/ce_to_initial`` (``reference: true``) — cross-entropy against the initial model's next-token
  distribution, the forgetting metric L_f of Kalajdzievski (2024, §3.1: "the target next token is provided by
  the pre-trained base model's prediction"; soft targets, as open-source reimplementations read it), and
  ``<set>/kl_to_initial`` = that minus the initial model's entropy;
* ``step`` — optimiser steps since the start of the stream (the sum of each learn event's planned steps,
  ``Strategy.steps_per_experience``), ``trainable_params`` (LoRA: the adapters' parameters, the paper's
  "number of parameters fine-tuned"), ``lora_rank`` (0 without adapters).

``finalize`` adds ``lm/<set>/ce_initial``, ``lm/<set>/ce`` and ``lm/<set>/forgetting`` (after the last event)
to the headline metrics. ``benchmarks/forgetting_law.py`` fits the scaling law of forgetting to these keys.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from clframe.errors import ConfigError
from clframe.evaluation import Evaluator, RunContext
from clframe.registry import register_evaluator
from clframe.stream import TensorData


def _split(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Inputs ``(N, 2, L)`` → next-token targets ``ids[:, 1:]``, their loss mask, the attention mask."""
    ids, mask = x[:, 0], x[:, 1]
    return ids[:, 1:], mask[:, 1:].float(), ids


@torch.no_grad()
def token_losses(model, x: Tensor, device: torch.device, reference=None, batch_size: int = 64) -> dict[str, float]:
    """Sums over ``x``'s masked tokens: ``nll`` (against the data), ``tokens``; with a ``reference`` model also
    ``ce_ref`` (cross-entropy against the reference's next-token distribution) and ``entropy_ref`` (its
    entropy). Both models in eval mode on ``device``."""
    model.eval().to(device)
    if reference is not None:
        reference.eval().to(device)
    sums = {"nll": 0.0, "tokens": 0.0, "ce_ref": 0.0, "entropy_ref": 0.0}
    for i in range(0, len(x), batch_size):
        xb = x[i : i + batch_size].to(device)
        targets, mask, _ = _split(xb)
        logp = model.backbone.token_logits(xb)[:, :-1].float().log_softmax(-1)
        sums["nll"] -= float((logp.gather(-1, targets[..., None]).squeeze(-1) * mask).sum())
        sums["tokens"] += float(mask.sum())
        if reference is not None:
            ref_logp = reference.backbone.token_logits(xb)[:, :-1].float().log_softmax(-1)
            ref_p = ref_logp.exp()
            sums["ce_ref"] -= float(((ref_p * logp).sum(-1) * mask).sum())
            sums["entropy_ref"] -= float(((ref_p * ref_logp).sum(-1) * mask).sum())
    return sums


def token_mean_ce(model, x: Tensor, device: torch.device, batch_size: int = 64) -> float:
    """Cross-entropy per masked token over all of ``x`` (``sum NLL / #tokens``)."""
    sums = token_losses(model, x, device, batch_size=batch_size)
    return sums["nll"] / max(sums["tokens"], 1.0)


def text_sets(stream) -> dict[str, TensorData]:
    """Every set a name can refer to: ``text_sets``, utility and held-out sets, ``exp_<j>`` test splits."""
    found: dict[str, TensorData] = dict(stream.extras.get("text_sets") or {})
    for key in ("utility", "holdout"):
        for name, part in (stream.extras.get(key) or {}).items():
            found.setdefault(name, part["data"] if isinstance(part, dict) else part)
    for e in stream.learn_experiences:
        if e.test is not None and len(e.test):
            found.setdefault(f"exp_{e.id}", e.test)
    return found


def trainable_parameters(strategy) -> int:
    return int(sum(p.numel() for p in strategy.parameters() if p.requires_grad))


def lora_rank(strategy) -> int:
    """The adapters' rank (peft's ``r``), 0 for a model without LoRA."""
    configs = getattr(getattr(strategy.backbone, "model", None), "peft_config", None) or {}
    ranks = [int(getattr(c, "r", 0) or 0) for c in configs.values()]
    return max(ranks, default=0)


@register_evaluator("lm_loss")
class LMLossEvaluator(Evaluator):
    """Token-mean cross-entropy of a causal LM on named text sets after every event, and its increase since the
    model before the stream (forgetting)."""

    models = ("language_model",)

    def __init__(self, *, sets: list[str] | None = None, reference: bool = True, batch_size: int = 64):
        if sets is not None and (isinstance(sets, str) or not all(isinstance(s, str) for s in sets) or not sets):
            raise ConfigError("evaluators.lm_loss.sets", sets, "null (every text set) or a list of set names")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
            raise ConfigError("evaluators.lm_loss.batch_size", batch_size, "a positive integer")
        self.names = None if sets is None else list(sets)
        self.reference, self.batch_size = bool(reference), batch_size
        self.context: RunContext | None = None
        self.data: dict[str, TensorData] | None = None
        self.initial_model = None
        self.initial: dict[str, float] = {}  # set -> CE of the initial model
        self.steps = 0
        self.last: dict[str, Any] = {}

    def setup(self, context: RunContext) -> None:
        self.context = context

    def _sets(self, stream) -> dict[str, TensorData]:
        if self.data is None:
            available = text_sets(stream)
            names = self.names
            if names is None:
                preferred = stream.extras.get("text_sets") or {
                    n: v for k in ("utility", "holdout") for n, v in (stream.extras.get(k) or {}).items()
                }
                names = list(preferred) or sorted(available)
            unknown = [n for n in names if n not in available]
            if unknown or not names:
                raise ConfigError("evaluators.lm_loss.sets", unknown or names, sorted(available))
            self.data = {n: available[n] for n in names}
        return self.data

    def _initial(self, device: torch.device):
        """The model before the stream, built as the run's was (global RNG states restored afterwards)."""
        if self.initial_model is None:
            if self.context is None:
                raise RuntimeError("lm_loss: setup(context) was not called")
            states = random.getstate(), np.random.get_state()
            with torch.random.fork_rng():  # CPU and CUDA generators
                model = self.context.new_strategy(None)
            random.setstate(states[0]), np.random.set_state(states[1])
            self.initial_model = model.requires_grad_(False).eval()
        return self.initial_model

    def after_event(self, strategy, stream, exp, device: torch.device) -> dict[str, Any]:
        sets = self._sets(stream)
        need_initial = self.reference or any(n not in self.initial for n in sets)
        initial = self._initial(device) if need_initial else None
        for name, data in sets.items():
            if name not in self.initial:
                self.initial[name] = token_mean_ce(initial, data.x, device, self.batch_size)
        if exp.kind == "learn" and exp.train is not None and len(exp.train):
            self.steps += int(strategy.steps_per_experience)
        out: dict[str, Any] = {
            "step": self.steps,
            "trainable_params": trainable_parameters(strategy),
            "lora_rank": lora_rank(strategy),
        }
        for name, data in sets.items():
            sums = token_losses(strategy, data.x, device, initial if self.reference else None, self.batch_size)
            n = max(sums["tokens"], 1.0)
            out[f"{name}/ce"] = sums["nll"] / n
            out[f"{name}/ce_initial"] = self.initial[name]
            out[f"{name}/forgetting"] = sums["nll"] / n - self.initial[name]
            if self.reference:
                out[f"{name}/ce_to_initial"] = sums["ce_ref"] / n
                out[f"{name}/kl_to_initial"] = (sums["ce_ref"] - sums["entropy_ref"]) / n
        if initial is not None:
            initial.cpu()
        self.last = out
        return out

    def finalize(self, run_dir: Path, result: dict[str, Any]) -> dict[str, float]:
        headline: dict[str, float] = {}
        for name, ce0 in self.initial.items():
            headline[f"lm/{name}/ce_initial"] = ce0
            if f"{name}/ce" in self.last:
                headline[f"lm/{name}/ce"] = self.last[f"{name}/ce"]
                headline[f"lm/{name}/forgetting"] = self.last[f"{name}/forgetting"]
        return headline

    def state(self) -> dict[str, Any]:
        return {"initial": dict(self.initial), "steps": self.steps, "last": dict(self.last)}

    def load_state(self, state: dict[str, Any]) -> None:
        self.initial = dict(state.get("initial", {}))
        self.steps = int(state.get("steps", 0))
        self.last = dict(state.get("last", {}))
