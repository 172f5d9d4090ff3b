"""Forget requests inserted between the learning experiences of any scenario, and stage orderings.

Learning and unlearning become events of one stream::

    scenario:
      name: unlearning
      base: {name: split, dataset: digits, n_experiences: 3}
      requests:
        - {after: 1, type: class, classes: [1]}            # forget class 1 after the 2nd experience
        - {after: 2, type: fraction, experience: 1, fraction: 0.3}
      retain_budget: null      # all retained data; an int (samples) or a float (fraction) subsamples it

Request types (``experience`` = index among the base scenario's learn experiences, 0-based):
``class`` (``classes``), ``fraction`` (``fraction`` of ``experience``, or of all data learned so far
when ``experience`` is omitted), ``experience`` (all its data),
``ids`` (global sample ids of the training set). A forget event gets ``forget`` (the samples to
remove), ``retain`` (every sample learned so far and not forgotten, or a random ``retain_budget``
of them) and ``test`` (the test splits of the experiences learned so far).

Forgotten samples are removed from the training data of every later learn experience (a sample is
identified by its id, so in a domain-incremental stream forgetting an id forgets that image in every
domain). After each request the runner purges the strategy's declared sample stores and verifies that
no forgotten id is reachable (``clframe.stores``); state derived from training data (EWC's Fisher, ...)
follows each strategy's declared ``derived_state`` policy, recorded in ``metrics.json``.
A forget event's ``removed_classes`` are the classes with no learned, unforgotten training sample left:
they leave the CL test columns from that event on (``metrics.cl.retained_matrix``).

``order`` permutes the base learn experiences (the same stages in another order) for path-dependence
studies (``benchmarks/path_dependence.py``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from clframe.errors import ConfigError
from clframe.registry import SCENARIOS, register_scenario
from clframe.stream import Experience, Stream, TensorData

REQUEST_TYPES = ("class", "fraction", "experience", "ids")


def reorder(exps: list[Experience], order: Sequence[int]) -> list[Experience]:
    """The learn experiences in ``order`` (a permutation of their indices)."""
    if sorted(int(i) for i in order) != list(range(len(exps))):
        raise ConfigError("scenario.order", list(order), f"a permutation of {list(range(len(exps)))}")
    return [exps[int(i)] for i in order]


def _drop(data: TensorData, forgotten: Tensor) -> TensorData:
    return data.subset(~torch.isin(data.ids, forgotten)) if len(forgotten) else data


def select_forget(req: Mapping[str, Any], seen: list[TensorData], key: str, gen: torch.Generator) -> TensorData:
    """The samples a request asks to forget, from ``seen`` (training data of learned experiences,
    already without earlier forgotten samples). Raises ConfigError for bad requests."""
    kind = req.get("type")
    if kind not in REQUEST_TYPES:
        raise ConfigError(f"{key}.type", kind, REQUEST_TYPES)
    data = TensorData.concat(seen)
    if kind == "class":
        classes = [int(c) for c in req.get("classes") or []]
        learned = sorted({c for d in seen for c in d.classes()})
        unknown = [c for c in classes if c not in learned]
        if not classes or unknown:
            raise ConfigError(
                f"{key}.classes", classes, learned, hint="forget only classes learned so far (and not yet forgotten)"
            )
        out = data.subset(torch.isin(data.y, torch.tensor(classes)))
    elif kind in ("fraction", "experience"):
        k = req.get("experience")
        if k is None and kind == "fraction":
            out = data  # a random fraction of everything learned so far
        elif not isinstance(k, int) or not 0 <= k < len(seen):
            raise ConfigError(
                f"{key}.experience", k, list(range(len(seen))), hint="index of a learn experience seen so far"
            )
        else:
            out = seen[k]
        if kind == "fraction":
            frac = req.get("fraction")
            if not isinstance(frac, (int, float)) or not 0 < frac <= 1:
                raise ConfigError(f"{key}.fraction", frac, "a number in (0, 1]")
            n = int(round(frac * len(out)))
            out = out.subset(torch.randperm(len(out), generator=gen)[:n].sort().values)
    else:
        ids = torch.as_tensor([int(i) for i in req.get("ids") or []], dtype=torch.long)
        bad = ids[~torch.isin(ids, data.ids)]
        if len(bad):
            hi = int(data.ids.max()) if len(data) else -1
            raise ConfigError(
                f"{key}.ids",
                bad.tolist()[:10],
                f"ids of samples learned so far and not forgotten (within 0..{hi})",
                hint="an id is out of range, not learned yet, or already forgotten",
            )
        out = data.subset(torch.isin(data.ids, ids))
    if not len(out):
        raise ConfigError(key, dict(req), hint="the forget set is empty (nothing left to forget for this request)")
    return out


def apply_budget(data: TensorData, budget: int | float | None, gen: torch.Generator) -> TensorData:
    """All of ``data`` (``None``), ``budget`` random samples (int) or a fraction (float in (0, 1])."""
    if budget is None:
        return data
    n = int(budget) if isinstance(budget, int) else int(round(float(budget) * len(data)))
    if n <= 0 or (isinstance(budget, float) and budget > 1):
        raise ConfigError(
            "scenario.retain_budget", budget, "null, a positive number of samples or a fraction in (0, 1]"
        )
    return data.subset(torch.randperm(len(data), generator=gen)[: min(n, len(data))].sort().values)


def insert_requests(
    learn: list[Experience],
    requests: Sequence[Mapping[str, Any]],
    *,
    retain_budget: int | float | None = None,
    seed: int = 0,
) -> list[Experience]:
    """Interleave forget events with the learn experiences (ids re-numbered by stream position)."""
    for i, req in enumerate(requests):
        after = req.get("after")
        if not isinstance(after, int) or after < 0:
            raise ConfigError(
                f"scenario.requests[{i}].after",
                after,
                list(range(len(learn))),
                hint="a forget request needs something learned before it (after >= 0)",
            )
        if after >= len(learn):
            raise ConfigError(f"scenario.requests[{i}].after", after, list(range(len(learn))))
    events: list[Experience] = []
    learned: list[TensorData] = []
    forgotten = torch.zeros(0, dtype=torch.long)
    for k, exp in enumerate(learn):
        train = _drop(exp.train, forgotten)
        events.append(dataclasses.replace(exp, id=len(events), train=train, name=f"learn_{k}"))
        learned.append(train)
        for i, req in enumerate(requests):
            if req["after"] != k:
                continue
            gen = torch.Generator().manual_seed(seed * 7919 + len(events))
            seen = [_drop(d, forgotten) for d in learned]
            forget = select_forget(req, seen, f"scenario.requests[{i}]", gen)
            forgotten = torch.cat([forgotten, forget.ids]).unique()
            kept = [d for d in (_drop(d, forgotten) for d in learned) if len(d)]
            still = {c for d in kept for c in d.classes()}
            removed = sorted({c for d in learned for c in d.classes()} - still)
            retain = apply_budget(TensorData.concat(kept), retain_budget, gen) if kept else None
            test = TensorData.concat([e.test for e in events if e.kind == "learn"])
            name = event_name(req, i, {e.name for e in events})
            events.append(
                Experience(
                    len(events),
                    "forget",
                    None,
                    test,
                    forget.classes(),
                    task_id=exp.task_id,
                    forget=forget,
                    retain=retain,
                    name=name,
                    removed_classes=removed,
                )
            )
    return events


@register_scenario("unlearning")
def unlearning(
    *,
    base: Mapping[str, Any],
    requests: Sequence[Mapping[str, Any]] = (),
    order: Sequence[int] | None = None,
    retain_budget: int | float | None = None,
    seed: int = 0,
) -> Stream:
    """Any base scenario with forget requests between its learn experiences (and optionally reordered)."""
    if not isinstance(base, Mapping) or "name" not in base:
        raise ConfigError(
            "scenario.base", base, SCENARIOS.names(), hint="a scenario node, e.g. {name: split, dataset: digits}"
        )
    stream = SCENARIOS.build(base, seed=seed)
    learn = stream.learn_experiences
    name = stream.name
    if order is not None:
        learn = reorder(learn, order)
        name += "_order" + "".join(str(int(i)) for i in order)
    requests = [dict(r) for r in requests]
    events = insert_requests(learn, requests, retain_budget=retain_budget, seed=seed)
    return Stream(f"{name}_unlearning", events, stream.n_classes, stream.input_shape, stream.setting, stream.extras)


def event_name(req: dict, index: int, taken: set[str]) -> str:
    """A forget event's name says what it forgets: ``forget_class_1``, ``forget_classes_1_3``,
    ``forget_30pct_exp1`` (``_<index>`` appended if two requests would share a name)."""
    kind = req.get("type")
    if kind == "class" and req.get("classes") is not None:
        classes = list(req["classes"])
        name = f"forget_class{'es' if len(classes) > 1 else ''}_" + "_".join(str(c) for c in classes)
    elif kind == "fraction" and req.get("fraction") is not None:
        where = f"_exp{req['experience']}" if req.get("experience") is not None else ""
        name = f"forget_{100 * float(req['fraction']):g}pct{where}"
    else:
        name = f"forget_{kind}_{index}"
    return name if name not in taken else f"{name}_{index}"
