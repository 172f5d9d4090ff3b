"""Data root and in-memory tensor data sets (digits, MNIST, blobs here; CIFAR-10 in :mod:`clframe.data.cifar`).

No code here ever downloads: missing files raise :class:`DataNotFoundError` naming
``CLFRAME_DATA_ROOT`` and the expected path; a file that is there but unreadable (truncated,
bad header, images / labels counts that disagree) raises :class:`DataError` naming the file
and the fix. New data sets register with
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

from clframe.errors import ConfigError, DataError, DataNotFoundError
from clframe.registry import discover
from clframe.stream import TensorData

ENV_ROOT = "CLFRAME_DATA_ROOT"
_DATASETS: dict[str, Callable[[], tuple[TensorData, TensorData]]] = {}


REPO = Path(__file__).resolve().parents[2]  # the checkout (or site-packages) that holds the clframe package


def data_root_candidates() -> list[Path]:
    """Where the data root is looked for when ``$CLFRAME_DATA_ROOT`` is unset, first existing one wins: next to
    the checkout (``<repo>/../shared/data``, ``<repo>/data``), then ``~/.cache/clframe`` — found from the
    package's location, never from the current folder, so a run started elsewhere finds the same data."""
    return [REPO.parent / "shared" / "data", REPO / "data", Path("~/.cache/clframe").expanduser()]


def data_root() -> Path:
    """``$CLFRAME_DATA_ROOT``, else the first existing folder of :func:`data_root_candidates` (else the last)."""
    env = os.environ.get(ENV_ROOT)
    if env:
        return Path(env).expanduser().resolve()
    candidates = data_root_candidates()
    return next((p.resolve() for p in candidates if p.is_dir()), candidates[-1])


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


MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_IDX_UINT8 = 0x08


def _restore_hint(dataset: str) -> str:
    return f"replace it with an intact copy of the {dataset} file (clframe never downloads data)"


def idx_header(path: Path, *, ndim: int, dataset: str = "MNIST") -> tuple[tuple[int, ...], int]:
    """Validate an uncompressed uint8 IDX file's header against its size, reading only the header.

    Returns ``(dims, data_offset)``; raises :class:`DataError` naming ``path`` when the file is
    gzip-compressed, has a wrong magic number or is shorter / longer than its header declares."""
    size = path.stat().st_size
    with path.open("rb") as fh:
        head = fh.read(4 + 4 * ndim)
    fix = _restore_hint(dataset)
    if head[:2] == b"\x1f\x8b":
        raise DataError(f"{path} is gzip-compressed; gunzip it (clframe reads the uncompressed IDX file)")
    expected_magic = (_IDX_UINT8 << 8) | ndim  # 2051 for images (3 dims), 2049 for labels (1 dim)
    if len(head) < 4:
        raise DataError(f"{path} is truncated ({size} bytes, no IDX header); {fix}")
    magic = int.from_bytes(head[:4], "big")
    if magic != expected_magic:
        raise DataError(
            f"{path} has a bad IDX header (magic number {magic}, expected {expected_magic}: uint8 data, "
            f"{ndim} dimension{'s' * (ndim > 1)}); {fix}"
        )
    if len(head) < 4 + 4 * ndim:
        raise DataError(f"{path} is truncated ({size} bytes, inside the IDX header); {fix}")
    dims = tuple(int(d) for d in np.frombuffer(head, dtype=">i4", count=ndim, offset=4))
    offset = 4 + 4 * ndim
    expected = offset + int(np.prod(dims))
    if size < expected:
        raise DataError(f"{path} is truncated ({size} bytes, its header {dims} needs {expected}); {fix}")
    if size > expected:
        raise DataError(f"{path} has {size - expected} bytes past the {expected} its header {dims} declares; {fix}")
    return dims, offset


def read_idx(path: Path, *, ndim: int, dataset: str = "MNIST") -> np.ndarray:
    """Read an uncompressed uint8 IDX file (validated by :func:`idx_header`) as an array of its dims."""
    dims, offset = idx_header(path, ndim=ndim, dataset=dataset)
    return np.fromfile(path, dtype=np.uint8, offset=offset).reshape(dims)


def check_idx_pair(images: Path, labels: Path, *, dataset: str = "MNIST") -> int:
    """Headers of an images / labels IDX pair are valid and agree on the sample count; returns it."""
    (n_img, *_), _ = idx_header(images, ndim=3, dataset=dataset)
    (n_lab,), _ = idx_header(labels, ndim=1, dataset=dataset)
    if n_img != n_lab:
        raise DataError(
            f"{images} holds {n_img} images but {labels} holds {n_lab} labels; "
            f"replace the two with a matching, intact pair of {dataset} files (clframe never downloads data)"
        )
    return n_img


def check_mnist_folder(raw: Path, *, dataset: str = "MNIST") -> None:
    """The four MNIST-layout IDX files (MNIST, Fashion-MNIST) exist in ``raw`` and their headers are
    consistent: :class:`DataNotFoundError` listing the missing ones, else :class:`DataError`."""
    require_files(*(raw / n for pair in MNIST_FILES.values() for n in pair), dataset=dataset)
    for img, lab in MNIST_FILES.values():
        check_idx_pair(raw / img, raw / lab, dataset=dataset)


def require_files(*paths: Path, dataset: str, hint: str = "") -> None:
    """Raise :class:`DataNotFoundError` listing the ``paths`` that are not files (never downloads)."""
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise DataNotFoundError(
            f"{dataset} files not found: {', '.join(missing)}. Set {ENV_ROOT} to the folder that holds "
            f"them (currently {ENV_ROOT}={os.environ.get(ENV_ROOT)!r}, data root {data_root()}"
            + ("" if os.environ.get(ENV_ROOT) else f"; searched {', '.join(map(str, data_root_candidates()))}")
            + "). "
            "clframe never downloads data." + (f" {hint}" if hint else "")
        )


@register_dataset("mnist")
def load_mnist() -> tuple[TensorData, TensorData]:
    """MNIST from ``$CLFRAME_DATA_ROOT/MNIST/raw/*-ubyte`` as floats in [0, 1], shape (N, 1, 28, 28)."""
    raw = data_root() / "MNIST" / "raw"
    check_mnist_folder(raw)
    out = []
    for img, lab in MNIST_FILES.values():
        x = torch.from_numpy(read_idx(raw / img, ndim=3)).float().div_(255.0).unsqueeze(1)
        y = torch.from_numpy(read_idx(raw / lab, ndim=1).astype(np.int64))
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
