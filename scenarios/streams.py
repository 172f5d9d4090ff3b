"""More streams: Seq-CIFAR-10 with augmentation, rotated MNIST (domain-IL), blurry-boundary class-IL.

Online continual learning (single pass, small batches) is a training protocol on any of these
streams: ``trainer.max_epochs=1 strategy.batch_size=10`` (see ``experiment=online_cifar10_er_cpu``).
Class orders come from ``class_order`` or a seeded permutation (``shuffle_classes=true``), via
:func:`scenarios.splits.resolve_class_order`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import replace
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F

from clframe.data import dataset_name, input_shape, lazy_subset, load_dataset
from clframe.data.cifar import augment as cifar_augment
from clframe.errors import ConfigError
from clframe.registry import register_scenario
from clframe.scenarios.splits import per_class_subset, resolve_class_order, split
from clframe.stream import CacheBudget, Experience, LazyRows, Stream, TensorData


@register_scenario("seq_cifar10")
def seq_cifar10(
    *,
    setting: str = "class",
    n_experiences: int = 5,
    class_order: Sequence[int] | None = None,
    shuffle_classes: bool = False,
    train_per_class: int | None = None,
    test_per_class: int | None = None,
    augment: bool = True,
    seed: int = 0,
) -> Stream:
    """Seq-CIFAR-10 (5 x 2 classes, class- or task-IL) with random-crop + flip training augmentation
    applied per batch (``Experience.transform``); ``train_per_class`` / ``test_per_class`` take a
    seeded class-balanced subset (reduced CPU protocols)."""
    stream = split(
        dataset="cifar10",
        setting=setting,
        n_experiences=n_experiences,
        class_order=class_order,
        shuffle_classes=shuffle_classes,
        train_per_class=train_per_class,
        test_per_class=test_per_class,
        seed=seed,
    )
    exps = [replace(e, transform=cifar_augment if augment else None) for e in stream.experiences]
    return Stream("seq_cifar10", exps, stream.n_classes, stream.input_shape, stream.setting)


def rotate(x: torch.Tensor, degrees: float) -> torch.Tensor:
    """Rotate a batch of images (N, C, H, W) about the centre (bilinear, zero fill)."""
    a = math.radians(degrees)
    theta = torch.tensor([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0]], dtype=x.dtype)
    grid = F.affine_grid(theta.expand(len(x), 2, 3), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


@register_scenario("rotated")
def rotated(
    *,
    dataset: str | Mapping[str, Any] = "mnist",
    n_experiences: int = 20,
    angles: Sequence[float] | None = None,
    max_angle: float = 180.0,
    train_per_experience: int | None = 1000,
    cache_mb: float = 1024,
    seed: int = 0,
) -> Stream:
    """Rotated MNIST, domain-incremental (Lopez-Paz & Ranzato 2017): the same 10 classes, each
    experience rotates every image by its own angle — ``angles`` or seeded uniform in
    ``[0, max_angle)``. Each experience trains on ``train_per_experience`` random samples (GEM: 1000;
    ``null`` = all) and is tested on the whole rotated test set.
    Rotated images are computed when first used (:class:`LazyRows`) and kept while the stream's
    rotated copies fit in ``cache_mb`` MB; the rest are rotated again per batch on every use
    (memory bounded by ``cache_mb`` whatever ``n_experiences``, at the cost of rotations).
    ``dataset``: a registered name or ``{name: ..., <option>: ...}`` (e.g. ``{name: imagefolder, path: ...}``)."""
    if angles is None:
        if n_experiences <= 0:
            raise ConfigError("scenario.n_experiences", n_experiences, "a positive integer")
        gen = torch.Generator().manual_seed(seed)
        angles = (torch.rand(n_experiences, generator=gen) * max_angle).tolist()
    if not (isinstance(cache_mb, (int, float)) and cache_mb >= 0):
        raise ConfigError("scenario.cache_mb", cache_mb, "a non-negative number of MB (0: rotate per batch)")
    train, test = load_dataset(dataset)
    cache = CacheBudget(int(cache_mb * 2**20))
    gen = torch.Generator().manual_seed(seed + 1)
    exps = []
    for i, deg in enumerate(angles):
        rows = torch.randperm(len(train), generator=gen)[:train_per_experience].sort().values
        turn = partial(rotate, degrees=deg)
        exps.append(
            Experience(
                i,
                "learn",
                TensorData(LazyRows(train.x, turn, rows, cache), train.y[rows], train.ids[rows], train.task[rows]),
                TensorData(LazyRows(test.x, turn, cache=cache), test.y, test.ids, test.task),
                train.classes(),
                name=f"rot_{deg:.0f}",
            )
        )
    return Stream(f"rotated_{dataset_name(dataset)}", exps, len(train.classes()), input_shape(train), setting="domain")


@register_scenario("blurry")
def blurry(
    *,
    dataset: str | Mapping[str, Any] = "mnist",
    n_experiences: int = 5,
    blurry_percent: float = 10.0,
    class_order: Sequence[int] | None = None,
    shuffle_classes: bool = False,
    train_per_class: int | None = None,
    seed: int = 0,
) -> Stream:
    """Class-IL with blurry boundaries (Aljundi et al. 2019; Bang et al. 2021, "Blurry-M"): each
    experience has its *major* classes, but ``blurry_percent`` % of every experience's training
    samples are moved to other (random) experiences, so a class shows up before and after "its"
    experience. Tests are per major classes; ``Experience.classes`` lists every class present.
    ``dataset``: a registered name or ``{name: ..., <option>: ...}``; disk-backed inputs stay lazy."""
    if not 0 <= blurry_percent < 100:
        raise ConfigError("scenario.blurry_percent", blurry_percent, "a percentage in [0, 100)")
    train, test = load_dataset(dataset)
    train = per_class_subset(train, train_per_class, seed)
    order = resolve_class_order(train.classes(), class_order, shuffle_classes, seed)
    if n_experiences <= 1 or len(order) % n_experiences:
        raise ConfigError("scenario.n_experiences", n_experiences, "a divisor (>1) of the number of classes")
    k = len(order) // n_experiences
    major = torch.empty(max(order) + 1, dtype=torch.long)
    for i in range(n_experiences):
        major[torch.tensor(order[i * k : (i + 1) * k])] = i
    gen = torch.Generator().manual_seed(seed)
    home = major[train.y].clone()
    moved = torch.rand(len(train), generator=gen) < blurry_percent / 100
    shift = torch.randint(1, n_experiences, (len(train),), generator=gen)  # another experience, uniformly
    home[moved] = (home[moved] + shift[moved]) % n_experiences
    exps = []
    for i in range(n_experiences):
        tr = lazy_subset(train, home == i)
        te = lazy_subset(test, major[test.y] == i)
        exps.append(Experience(i, "learn", tr, te, tr.classes(), name=f"blurry_{i}"))
    return Stream(f"blurry_{dataset_name(dataset)}", exps, len(order), input_shape(train), setting="class")
