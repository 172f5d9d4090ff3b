"""Data root and in-memory tensor data sets (digits, MNIST, blobs here; CIFAR-10 in :mod:`clframe.data.cifar`).

No code here ever downloads: missing files raise :class:`DataNotFoundError` naming
``CLFRAME_DATA_ROOT`` and the expected path. New data sets register with
``@register_dataset("name")`` and return ``(train, test)`` as :class:`TensorData`
with inputs as float tensors of shape ``(N, C, H, W)``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from clframe.errors import ConfigError, DataNotFoundError
from clframe.registry import discover
from clframe.stream import TensorData

ENV_ROOT = "CLFRAME_DATA_ROOT"
_DATASETS: dict[str, Callable[[], tuple[TensorData, TensorData]]] = {}


def data_root() -> Path:
    """``$CLFRAME_DATA_ROOT``, else ``../shared/data`` if it exists, else ``~/.cache/clframe``."""
    env = os.environ.get(ENV_ROOT)
    if env:
        return Path(env).expanduser().resolve()
    shared = Path("../shared/data")
    if shared.is_dir():
        return shared.resolve()
    return Path("~/.cache/clframe").expanduser()


def register_dataset(name: str) -> Callable:
    def deco(fn: Callable) -> Callable:
        _DATASETS[name] = fn
        return fn

    return deco


def dataset_names() -> list[str]:
    discover("clframe.data")
    return sorted(_DATASETS)


@lru_cache(maxsize=4)
def load_dataset(name: str) -> tuple[TensorData, TensorData]:
    """Return ``(train, test)`` of a registered data set (cached per process)."""
    if name not in _DATASETS:
        discover("clframe.data")  # the data sets of this package's modules (clframe.data.cifar, ...)
    if name not in _DATASETS:
        raise ConfigError("scenario.dataset", name, dataset_names())
    return _DATASETS[name]()


def input_shape(data: TensorData) -> tuple[int, ...]:
    return tuple(data.x.shape[1:])


@register_dataset("digits")
def load_digits() -> tuple[TensorData, TensorData]:
    """sklearn's 8x8 digits (1,797 images, ships with scikit-learn): a fixed stratified 70/30 split."""
    from sklearn.datasets import load_digits as sk_load
    from sklearn.model_selection import train_test_split

    ds = sk_load()
    x = (ds.images / 16.0).astype(np.float32)[:, None]
    idx_tr, idx_te = train_test_split(np.arange(len(x)), test_size=0.3, random_state=0, stratify=ds.target)
    make = lambda i: TensorData.from_tensors(torch.from_numpy(x[i]), torch.from_numpy(ds.target[i]))  # noqa: E731
    return make(idx_tr), make(idx_te)


def _read_idx(path: Path) -> np.ndarray:
    raw = path.read_bytes()
    ndim = raw[3]
    dims = np.frombuffer(raw, dtype=">i4", count=ndim, offset=4)
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def require_files(*paths: Path, dataset: str) -> None:
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise DataNotFoundError(
            f"{dataset} files not found: {', '.join(missing)}. Set {ENV_ROOT} to the folder that holds "
            f"them (currently {ENV_ROOT}={os.environ.get(ENV_ROOT)!r}, data root {data_root()}). "
            "clframe never downloads data."
        )


@register_dataset("mnist")
def load_mnist() -> tuple[TensorData, TensorData]:
    """MNIST from ``$CLFRAME_DATA_ROOT/MNIST/raw/*-ubyte`` as floats in [0, 1], shape (N, 1, 28, 28)."""
    raw = data_root() / "MNIST" / "raw"
    names = {
        "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
        "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
    }
    require_files(*(raw / n for pair in names.values() for n in pair), dataset="MNIST")
    out = []
    for img, lab in names.values():
        x = torch.from_numpy(_read_idx(raw / img).copy()).float().div_(255.0).unsqueeze(1)
        y = torch.from_numpy(_read_idx(raw / lab).astype(np.int64))
        out.append(TensorData.from_tensors(x, y))
    return out[0], out[1]


@register_dataset("blobs")
def load_blobs(n_classes: int = 10, per_class: int = 60, dim: int = 16, seed: int = 0) -> tuple[TensorData, TensorData]:
    """Synthetic, well-separated Gaussian blobs shaped (1, 4, 4): a stream that trains in
    milliseconds, for smoke tests of every strategy. 2/3 train, 1/3 test per class."""
    gen = torch.Generator().manual_seed(seed)
    centers = torch.randn(n_classes, dim, generator=gen) * 3
    x = centers.repeat_interleave(per_class, 0) + torch.randn(n_classes * per_class, dim, generator=gen)
    y = torch.arange(n_classes).repeat_interleave(per_class)
    test = (torch.arange(len(y)) % 3) == 0
    side = int(dim**0.5)
    x = x.reshape(-1, 1, side, side)
    return TensorData.from_tensors(x[~test], y[~test]), TensorData.from_tensors(x[test], y[test])
