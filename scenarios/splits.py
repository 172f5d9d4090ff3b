"""Class-incremental and task-incremental splits of a labelled data set."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from clframe.data import dataset_name, input_shape, lazy_subset, load_dataset
from clframe.errors import ConfigError
from clframe.registry import register_scenario
from clframe.stream import Experience, Stream, TensorData


def resolve_class_order(
    classes: Sequence[int], class_order: Sequence[int] | None, shuffle: bool, seed: int
) -> list[int]:
    """The given order (validated), a seeded permutation, or the sorted classes."""
    classes = sorted(classes)
    if class_order is not None:
        order = [int(c) for c in class_order]
        if sorted(order) != classes:
            missing = sorted(set(classes) - set(order))
            extra = sorted({c for c in order if order.count(c) > 1} | (set(order) - set(classes)))
            raise ConfigError(
                "scenario.class_order",
                list(order),
                f"a permutation of {classes}",
                hint=f"missing: {missing}; duplicated or unknown: {extra}",
            )
        return order
    if shuffle:
        perm = torch.randperm(len(classes), generator=torch.Generator().manual_seed(seed)).tolist()
        return [classes[i] for i in perm]
    return classes


def split_by_classes(
    train: TensorData, test: TensorData, groups: list[list[int]], *, task_labels: bool
) -> list[Experience]:
    exps = []
    for i, group in enumerate(groups):
        g = torch.as_tensor(group)
        tr, te = lazy_subset(train, torch.isin(train.y, g)), lazy_subset(test, torch.isin(test.y, g))
        task = i if task_labels else 0
        exps.append(Experience(i, "learn", tr.with_task(task), te.with_task(task), list(group), task_id=task))
    return exps


def per_class_subset(data: TensorData, n: int | None, seed: int) -> TensorData:
    """At most ``n`` seeded random samples per class (reduced CPU protocols); ``None``: all."""
    if not n:
        return data
    gen = torch.Generator().manual_seed(seed)
    keep = []
    for c in data.classes():
        idx = (data.y == c).nonzero().squeeze(1)
        keep.append(idx[torch.randperm(len(idx), generator=gen)[:n]])
    return lazy_subset(data, torch.cat(keep).sort().values)


@register_scenario("split")
def split(
    *,
    dataset: str | Mapping[str, Any] = "digits",
    setting: str = "class",
    n_experiences: int = 5,
    class_order: Sequence[int] | None = None,
    shuffle_classes: bool = False,
    classes: Sequence[int] | None = None,
    train_per_class: int | None = None,
    test_per_class: int | None = None,
    seed: int = 0,
) -> Stream:
    """Split a data set's classes into ``n_experiences`` equal groups (class- or task-incremental).
    ``classes``: stream only this subset (e.g. 5-9 after pretraining on 0-4); labels keep their ids.
    ``dataset``: a registered name or ``{name: ..., <option>: ...}`` (e.g. ``{name: imagefolder, path: ...}``);
    disk-backed inputs (:class:`LazyRows`) stay lazy through the split."""
    if setting not in ("class", "task"):
        raise ConfigError("scenario.setting", setting, ["class", "task"])
    train, test = load_dataset(dataset)
    train, test = per_class_subset(train, train_per_class, seed), per_class_subset(test, test_per_class, seed)
    pool = train.classes() if classes is None else sorted(int(c) for c in classes)
    if not set(pool) <= set(train.classes()):
        raise ConfigError("scenario.classes", list(classes), f"a subset of {train.classes()}")
    order = resolve_class_order(pool, class_order, shuffle_classes, seed)
    if n_experiences <= 0 or len(order) % n_experiences:
        divisors = [d for d in range(1, len(order) + 1) if len(order) % d == 0]
        raise ConfigError(
            "scenario.n_experiences", n_experiences, divisors, hint=f"{len(order)} classes must split evenly"
        )
    k = len(order) // n_experiences
    groups = [order[i * k : (i + 1) * k] for i in range(n_experiences)]
    exps = split_by_classes(train, test, groups, task_labels=setting == "task")
    n_classes = len(train.classes()) if classes is not None else len(order)
    return Stream(
        f"split_{dataset_name(dataset)}", exps, n_classes=n_classes, input_shape=input_shape(train), setting=setting
    )
