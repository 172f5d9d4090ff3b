"""Any ``avalanche.benchmarks`` benchmark as a clframe :class:`~clframe.stream.Stream`.

``scenario=avalanche scenario.benchmark=SplitMNIST scenario.args.n_experiences=5`` calls
``avalanche.benchmarks.classic.SplitMNIST(n_experiences=5, seed=<seed>, dataset_root=<data root>)``
and materialises each train / test experience as tensors (one pass through Avalanche's data
loading). Avalanche's own default transforms are replaced by none (``avalanche_transforms=false``),
so inputs are the same tensors our native loaders produce (MNIST in [0, 1]).

Sample order: Avalanche groups an experience's samples class by class; ``order="original"``
(default) sorts them back by their index in the original data set — the order of our native
``split`` scenario, so the same seed and class order give the same batches and the same accuracy
matrix. ``ids`` are those original indices when Avalanche exposes them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from clframe.data import data_root, require_files
from clframe.errors import ConfigError
from clframe.registry import register_scenario
from clframe.stream import Experience, Stream, TensorData

MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
NEEDS_MNIST = {"SplitMNIST", "PermutedMNIST", "RotatedMNIST"}


def original_indices(dataset) -> torch.Tensor | None:
    """Indices into the original data set, from Avalanche's flat-data index list (``None`` if unavailable)."""
    idx = getattr(getattr(dataset, "_flat_data", None), "_indices", None)
    return torch.as_tensor(list(idx), dtype=torch.long) if idx is not None and len(idx) == len(dataset) else None


def to_tensors(dataset, task: int, order: str, batch_size: int = 4096) -> TensorData:
    """Materialise an Avalanche dataset as :class:`TensorData` (x, y, original ids, task)."""
    xs, ys = [], []
    for batch in torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False):
        xs.append(batch[0])
        ys.append(torch.as_tensor(batch[1]))
    x, y = torch.cat(xs).float(), torch.cat(ys).long()
    ids = original_indices(dataset)
    if ids is None:
        ids = torch.arange(len(y))
    data = TensorData(x, y, ids, torch.full((len(y),), task, dtype=torch.long))
    return data.subset(ids.argsort()) if order == "original" else data


@register_scenario("avalanche")
def avalanche(
    *,
    benchmark: str = "SplitMNIST",
    args: Mapping[str, Any] | None = None,
    setting: str = "class",
    order: str = "original",
    avalanche_transforms: bool = False,
    seed: int = 0,
) -> Stream:
    """An ``avalanche.benchmarks.classic`` benchmark by name (``args``: its keyword arguments, ``null`` ones dropped;
    ``seed`` and ``dataset_root`` are filled in). ``setting``: class | task | domain."""
    import avalanche.benchmarks.classic as classic

    names = sorted(n for n in dir(classic) if n[0].isupper() and callable(getattr(classic, n)))
    if benchmark not in names:
        raise ConfigError("scenario.benchmark", benchmark, names)
    if setting not in ("class", "task", "domain"):
        raise ConfigError("scenario.setting", setting, ["class", "task", "domain"])
    if order not in ("original", "avalanche"):
        raise ConfigError("scenario.order", order, ["original", "avalanche"])
    if benchmark in NEEDS_MNIST:  # Avalanche would try to download; clframe never does
        require_files(*(data_root() / "MNIST" / "raw" / f for f in MNIST_FILES), dataset="MNIST")
    given = {k: v for k, v in dict(args or {}).items() if v is not None}
    kwargs = {"seed": seed, "dataset_root": str(data_root()), **given}
    if not avalanche_transforms:
        kwargs.update(train_transform=None, eval_transform=None)
    bench = getattr(classic, benchmark)(**kwargs)
    exps = []
    for i, (tr, te) in enumerate(zip(bench.train_stream, bench.test_stream, strict=True)):
        task = tr.task_label if setting == "task" else 0
        train, test = to_tensors(tr.dataset, task, order), to_tensors(te.dataset, task, order)
        classes = sorted(int(c) for c in tr.classes_in_this_experience)
        exps.append(Experience(i, "learn", train, test, classes, task_id=task, name=f"{benchmark}_{i}"))
    n_classes = int(getattr(bench, "n_classes", 0) or 1 + max(max(e.classes) for e in exps))
    shape = tuple(exps[0].train.x.shape[1:])
    return Stream(f"avalanche_{benchmark}", exps, n_classes, shape, setting=setting)
