"""Domain-incremental streams: each experience applies a fixed random pixel permutation."""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import Any

import torch

from clframe.data import dataset_name, input_shape, load_dataset
from clframe.errors import ConfigError
from clframe.registry import register_scenario
from clframe.stream import Experience, LazyRows, Stream, TensorData


def permute_rows(x: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """Images ``x`` (N, ...) with their pixels (all non-batch entries, flattened) reordered by ``perm``
    (``index_select``: a few times faster than ``x[:, perm]``, the same values)."""
    return torch.index_select(x.reshape(len(x), -1), 1, perm.to(x.device)).reshape(x.shape)


def permute_pixels(data: TensorData, perm: torch.Tensor, task: int) -> TensorData:
    """``data`` with permuted pixels, computed per indexed batch (:class:`LazyRows`: memory stays that
    of ``data`` however many permutations a stream has); labels and ids are shared, task ids constant."""
    n = len(data)
    x = LazyRows(data.x, partial(permute_rows, perm=perm))
    return TensorData(x, data.y, data.ids, torch.full((1,), task, dtype=torch.long).expand(n))


@register_scenario("permuted")
def permuted(
    *,
    dataset: str | Mapping[str, Any] = "mnist",
    n_experiences: int = 10,
    first_identity: bool = True,
    setting: str = "domain",
    seed: int = 0,
) -> Stream:
    """Permuted MNIST (Goodfellow et al. 2013; Kirkpatrick et al. 2017): same 10 classes, new
    pixel permutation per experience (the first one unpermuted if ``first_identity``).
    ``setting="task"`` adds task ids (multi-head over the same classes is then just a task label).
    Permuted inputs are computed per batch, so memory does not grow with ``n_experiences``.
    ``dataset``: a registered name or ``{name: ..., <option>: ...}`` (e.g. ``{name: imagefolder, path: ...}``)."""
    if n_experiences <= 0:
        raise ConfigError("scenario.n_experiences", n_experiences, "a positive integer")
    if setting not in ("domain", "task"):
        raise ConfigError("scenario.setting", setting, ["domain", "task"])
    train, test = load_dataset(dataset)
    n_pix = train.x[0].numel()
    gen = torch.Generator().manual_seed(seed)
    exps = []
    for i in range(n_experiences):
        perm = torch.arange(n_pix) if (i == 0 and first_identity) else torch.randperm(n_pix, generator=gen)
        task = i if setting == "task" else 0
        exps.append(
            Experience(
                i, "learn", permute_pixels(train, perm, task), permute_pixels(test, perm, task), train.classes(), task
            )
        )
    classes = len(train.classes())
    return Stream(
        f"permuted_{dataset_name(dataset)}", exps, n_classes=classes, input_shape=input_shape(train), setting=setting
    )
