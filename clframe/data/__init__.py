"""Data root and in-memory tensor data sets (digits, MNIST, blobs here; CIFAR-10 / CIFAR-100 in
:mod:`clframe.data.cifar`, torchvision's pickles and ImageFolder trees in :mod:`clframe.data.formats`).

No code here ever downloads: missing files raise :class:`DataNotFoundError` naming
``CLFRAME_DATA_ROOT`` and the expected path; a file that is there but unreadable (truncated,
bad header, images / labels counts that disagree) raises :class:`DataError` naming the file
and the fix. New data sets register with
``@register_dataset("name")`` and return ``(train, test)`` as :class:`TensorData`
with inputs as float tensors of shape ``(N, C, H, W)`` (or a :class:`~clframe.stream.LazyRows` that decodes
the rows indexed, for data sets read from disk batch by batch).

A data set is named by a string (``dataset: mnist``) or by a mapping whose other keys are the loader's
keyword arguments (``dataset: {name: imagefolder, path: /data/tree, image_size: 32}``); unknown, missing or
mistyped options are :class:`ConfigError`\ s naming ``scenario.dataset.<option>``.
"""

from __future__ import annotations

import gzip
import inspect
import os
import zlib
from collections.abc import Callable, Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from clframe.errors import ConfigError, DataError, DataNotFoundError
from clframe.registry import accepted_params, check_types, discover
from clframe.stream import LazyRows, TensorData

ENV_ROOT = "CLFRAME_DATA_ROOT"
_DATASETS: dict[str, Callable[..., tuple[TensorData, TensorData]]] = {}
DatasetSpec = str | Mapping[str, Any]  # "mnist" or {"name": "imagefolder", "path": ..., ...}


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


_SOURCES: dict[str, dict[str, Any]] = {}


def record_source(name: str, info: dict[str, Any]) -> None:
    """Say which files a loader read for data set ``name`` (e.g. lossless pickles or a re-encoded mirror)."""
    _SOURCES[name] = dict(info)


def data_sources() -> dict[str, dict[str, Any]]:
    """What the loaders of this process read, by data set (``metrics.json["data_sources"]``)."""
    return {k: dict(v) for k, v in _SOURCES.items()}


def register_dataset(name: str) -> Callable:
    def deco(fn: Callable) -> Callable:
        _DATASETS[name] = fn
        return fn

    return deco


def dataset_names() -> list[str]:
    discover("clframe.data")
    return sorted(_DATASETS)


def dataset_spec(spec: DatasetSpec) -> tuple[str, dict[str, Any]]:
    """``(name, options)`` of a data set given as ``"name"`` or ``{name: ..., <option>: <value>, ...}``."""
    if isinstance(spec, str):
        return spec, {}
    if isinstance(spec, Mapping):
        options = {str(k): v for k, v in spec.items()}
        name = options.pop("name", None)
        if not isinstance(name, str):
            raise ConfigError("scenario.dataset.name", name, dataset_names(), hint="a data set mapping needs a name")
        return name, options
    raise ConfigError("scenario.dataset", spec, "a data set name or a mapping {name: <data set>, <option>: <value>}")


def dataset_name(spec: DatasetSpec) -> str:
    """The registered name of a data set spec (``"imagefolder"`` for ``{name: imagefolder, path: ...}``)."""
    return dataset_spec(spec)[0]


def _frozen(value: Any) -> Any:
    """A hashable copy of a config value (lists -> tuples, mappings -> sorted item tuples) for the cache key."""
    if isinstance(value, Mapping):
        return tuple(sorted((str(k), _frozen(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)) or type(value).__name__ == "ListConfig":
        return tuple(_frozen(v) for v in value)
    return value


def load_dataset(spec: DatasetSpec) -> tuple[TensorData, TensorData]:
    """Return ``(train, test)`` of a registered data set (cached per process and options).

    ``spec`` is a name or a mapping ``{name: ..., **options}``: the options are the loader's keyword
    arguments, checked against its signature (unknown / missing / mistyped -> :class:`ConfigError`)."""
    name, options = dataset_spec(spec)
    return _load(name, tuple(sorted((k, _frozen(v)) for k, v in options.items())))


@lru_cache(maxsize=4)
def _load(name: str, options: tuple[tuple[str, Any], ...]) -> tuple[TensorData, TensorData]:
    if name not in _DATASETS:
        discover("clframe.data")  # the data sets of this package's modules (clframe.data.cifar, ...)
    if name not in _DATASETS:
        raise ConfigError("scenario.dataset", name, dataset_names())
    fn, kwargs = _DATASETS[name], dict(options)
    accepted = accepted_params(fn)
    for key, value in kwargs.items():
        if accepted is not None and key not in accepted:
            if not accepted:
                hint = f"data set {name!r} takes no options: give it by name (dataset: {name})"
                raise ConfigError(f"scenario.dataset.{key}", value, hint=hint)
            raise ConfigError(f"scenario.dataset.{key}", value, sorted(accepted), hint=f"unknown option of {name!r}")
    for param in inspect.signature(fn).parameters.values():
        if param.default is param.empty and param.kind in (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY):
            if param.name not in kwargs:
                raise ConfigError(
                    f"scenario.dataset.{param.name}",
                    None,
                    hint=f"data set {name!r} needs it: dataset={{name: {name}, {param.name}: ...}}",
                )
    check_types("scenario.dataset", fn, kwargs)
    return fn(**kwargs)


load_dataset.cache_clear = _load.cache_clear  # type: ignore[attr-defined]  # as when load_dataset was lru_cached
load_dataset.cache_info = _load.cache_info  # type: ignore[attr-defined]


def lazy_subset(data: TensorData, index: Tensor) -> TensorData:
    """``data.subset(index)``, except that inputs held as a :class:`LazyRows` without a cache stay lazy: the
    subset selects rows of it instead of computing them (a disk-backed data set is not read to be split)."""
    x = data.x
    if isinstance(x, LazyRows) and x.cache is None:
        rows = torch.arange(len(x.base)) if x.rows is None else x.rows
        x = LazyRows(x.base, x.fn, rows[index])
    else:
        x = x[index]
    return TensorData(x, data.y[index], data.ids[index], data.task[index])


class ConcatRows:
    """``LazyRows`` function over the inputs of several parts: global rows -> each part's rows, read part by part
    (a lazy part decodes only the rows asked for); the rows of ``torch.cat`` of the parts, in the same order."""

    __name__ = "concat_rows"

    def __init__(self, xs: list[Tensor | LazyRows]):
        self.xs = xs
        self.ends = torch.tensor([len(x) for x in xs]).cumsum(0)

    def __call__(self, rows: Tensor) -> Tensor:
        rows = rows.reshape(-1)
        part = torch.bucketize(rows, self.ends, right=True)
        out = None
        for k in part.unique().tolist():
            where = (part == k).nonzero().squeeze(1)
            values = self.xs[k][rows[where] - (self.ends[k - 1] if k else 0)]
            if out is None:
                out = values.new_empty((len(rows), *values.shape[1:]))
            out[where] = values
        return self.xs[0][rows[:0]] if out is None else out


def lazy_concat(parts: list[TensorData]) -> TensorData:
    """``TensorData.concat(parts)``, except that when a part's inputs are a :class:`LazyRows` (a disk-backed data
    set) the result's are too: a :class:`ConcatRows` that reads the rows indexed from their parts, so nothing is
    materialised (labels, ids and task ids, small, are concatenated)."""
    parts = [p for p in parts if p is not None and len(p)]
    if not any(isinstance(p.x, LazyRows) for p in parts):
        return TensorData.concat(parts)
    n = sum(len(p) for p in parts)
    x = LazyRows(torch.arange(n), ConcatRows([p.x for p in parts]))
    return TensorData(x, *(torch.cat([getattr(p, f) for p in parts]) for f in ("y", "ids", "task")))


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
    if head[:2] == b"\x1f\x8b":
        raise DataError(f"{path} is gzip-compressed; gunzip it (clframe reads the uncompressed IDX file)")
    return _check_idx(head, size, path, ndim=ndim, dataset=dataset)


def _check_idx(head: bytes, size: int, path: Path, *, ndim: int, dataset: str) -> tuple[tuple[int, ...], int]:
    """The checks of :func:`idx_header` on the first bytes and the (decompressed) size of an IDX file."""
    fix = _restore_hint(dataset)
    what = "decompressed, " if path.suffix == ".gz" else ""
    expected_magic = (_IDX_UINT8 << 8) | ndim  # 2051 for images (3 dims), 2049 for labels (1 dim)
    if len(head) < 4:
        raise DataError(f"{path} is truncated ({what}{size} bytes, no IDX header); {fix}")
    magic = int.from_bytes(head[:4], "big")
    if magic != expected_magic:
        raise DataError(
            f"{path} has a bad IDX header (magic number {magic}, expected {expected_magic}: uint8 data, "
            f"{ndim} dimension{'s' * (ndim > 1)}); {fix}"
        )
    if len(head) < 4 + 4 * ndim:
        raise DataError(f"{path} is truncated ({what}{size} bytes, inside the IDX header); {fix}")
    dims = tuple(int(d) for d in np.frombuffer(head, dtype=">i4", count=ndim, offset=4))
    offset = 4 + 4 * ndim
    expected = offset + int(np.prod(dims))
    if size < expected:
        raise DataError(f"{path} is truncated ({what}{size} bytes, its header {dims} needs {expected}); {fix}")
    if size > expected:
        raise DataError(
            f"{path} has {size - expected} {what}bytes past the {expected} its header {dims} declares; {fix}"
        )
    return dims, offset


def read_idx(path: Path, *, ndim: int, dataset: str = "MNIST") -> np.ndarray:
    """Read a uint8 IDX file as an array of its dims: uncompressed (validated by :func:`idx_header`, read
    from disk) or, for a ``*.gz`` path (torchvision's downloads), decompressed in memory and validated alike."""
    if path.suffix == ".gz":
        try:
            raw = gzip.decompress(path.read_bytes())
        except (OSError, EOFError, zlib.error) as err:  # BadGzipFile is an OSError
            raise DataError(
                f"{path} is not a readable gzip file ({describe_error(err)}); {_restore_hint(dataset)}"
            ) from err
        dims, offset = _check_idx(raw[: 4 + 4 * ndim], len(raw), path, ndim=ndim, dataset=dataset)
        return np.frombuffer(bytearray(raw), dtype=np.uint8, offset=offset).reshape(dims)  # writable
    dims, offset = idx_header(path, ndim=ndim, dataset=dataset)
    return np.fromfile(path, dtype=np.uint8, offset=offset).reshape(dims)


def describe_error(err: BaseException, limit: int = 160) -> str:
    """``Type: first line of the message`` (torch's unpickling errors span many lines)."""
    first = next((line.strip() for line in str(err).splitlines() if line.strip()), "")
    return f"{type(err).__name__}: {first[:limit]}{'...' * (len(first) > limit)}"


def check_idx_pair(images: Path, labels: Path, *, dataset: str = "MNIST") -> int:
    """Headers of an images / labels IDX pair are valid and agree on the sample count; returns it."""
    (n_img, *_), _ = idx_header(images, ndim=3, dataset=dataset)
    (n_lab,), _ = idx_header(labels, ndim=1, dataset=dataset)
    _check_counts(images, n_img, labels, n_lab, dataset=dataset)
    return n_img


def _check_counts(images: Path, n_img: int, labels: Path, n_lab: int, *, dataset: str) -> None:
    if n_img != n_lab:
        raise DataError(
            f"{images} holds {n_img} images but {labels} holds {n_lab} labels; "
            f"replace the two with a matching, intact pair of {dataset} files (clframe never downloads data)"
        )


def check_mnist_folder(raw: Path, *, dataset: str = "MNIST") -> None:
    """The four MNIST-layout IDX files (MNIST, Fashion-MNIST) exist in ``raw`` and their headers are
    consistent: :class:`DataNotFoundError` listing the missing ones, else :class:`DataError`."""
    require_files(*(raw / n for pair in MNIST_FILES.values() for n in pair), dataset=dataset)
    for img, lab in MNIST_FILES.values():
        check_idx_pair(raw / img, raw / lab, dataset=dataset)


def not_found(listing: str, *, dataset: str, hint: str = "") -> DataNotFoundError:
    """The one-line :class:`DataNotFoundError` of a data set whose files (``listing``) are not under the data root."""
    return DataNotFoundError(
        f"{dataset} files not found: {listing}. Set {ENV_ROOT} to the folder that holds "
        f"them (currently {ENV_ROOT}={os.environ.get(ENV_ROOT)!r}, data root {data_root()}"
        + ("" if os.environ.get(ENV_ROOT) else f"; searched {', '.join(map(str, data_root_candidates()))}")
        + "). "
        "clframe never downloads data." + (f" {hint}" if hint else "")
    )


def require_files(*paths: Path, dataset: str, hint: str = "") -> None:
    """Raise :class:`DataNotFoundError` listing the ``paths`` that are not files (never downloads)."""
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise not_found(", ".join(missing), dataset=dataset, hint=hint)


def mnist_files(raw: Path, *, dataset: str = "MNIST") -> dict[str, Path]:
    """Each of the four IDX files of an MNIST-layout folder: the uncompressed ``*-ubyte``, else torchvision's
    gzipped ``*-ubyte.gz``; :class:`DataNotFoundError` lists the ones with neither."""
    names = [n for pair in MNIST_FILES.values() for n in pair]
    found = {n: next((p for p in (raw / n, raw / f"{n}.gz") if p.is_file()), None) for n in names}
    hint = "The gzipped *-ubyte.gz files that torchvision downloads are read as well."
    require_files(*(raw / n for n, p in found.items() if p is None), dataset=dataset, hint=hint)
    return found


@register_dataset("mnist")
def load_mnist() -> tuple[TensorData, TensorData]:
    """MNIST from ``$CLFRAME_DATA_ROOT/MNIST/raw/*-ubyte`` (torchvision's raw layout; each file may instead be
    torchvision's gzipped ``*-ubyte.gz``, decompressed in memory) as floats in [0, 1], shape (N, 1, 28, 28)."""
    raw = data_root() / "MNIST" / "raw"
    files = mnist_files(raw)
    for img, lab in MNIST_FILES.values():  # the uncompressed pairs' headers first, cheaply, before any read
        if files[img].suffix != ".gz" and files[lab].suffix != ".gz":
            check_idx_pair(files[img], files[lab])
    out = []
    for img, lab in MNIST_FILES.values():
        images, labels = read_idx(files[img], ndim=3), read_idx(files[lab], ndim=1)
        _check_counts(files[img], len(images), files[lab], len(labels), dataset="MNIST")
        x = torch.from_numpy(images).float().div_(255.0).unsqueeze(1)
        y = torch.from_numpy(labels.astype(np.int64))
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
