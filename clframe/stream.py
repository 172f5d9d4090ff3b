"""Data types of a continual stream: tensor data sets, experiences (learn / forget events), streams.

Data live in memory as tensors, so an epoch is a sequence of index slices rather than
a Python loop over samples; :class:`TensorLoader` is the batch iterator that Lightning
consumes. Inputs derived row by row from a shared source (permuted or rotated copies of one data
set) can be a :class:`LazyRows` instead, computed for the rows indexed, so that a long stream does
not hold one full copy per experience.
"""

from __future__ import annotations

import hashlib
import json
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor


class CacheBudget:
    """Bytes that :class:`LazyRows` sharing this budget may keep materialised: first come, first kept
    (no eviction: evaluation scans every test set in order, which an LRU cache would always miss)."""

    def __init__(self, max_bytes: int):
        self.max_bytes, self.used = int(max_bytes), 0

    def reserve(self, nbytes: int) -> bool:
        if self.used + nbytes > self.max_bytes:
            return False
        self.used += nbytes
        return True


_ROW_SOURCES: weakref.WeakValueDictionary[str, Any] = weakref.WeakValueDictionary()


def register_row_source(fn: Any, *identity: Any) -> Any:
    """Name a :class:`LazyRows` function that reads a data set's rows by index (decoded files, an Avalanche data
    set) after ``identity`` (JSON-able: what it reads, e.g. its file list and options), so that checkpoints of
    sample stores refer to its rows (:meth:`LazyRows.reference`) instead of copying the data. ``fn`` needs
    ``len(fn)``: the number of rows it can read. Returns ``fn``."""
    blob = json.dumps([type(fn).__name__, *identity], default=str, sort_keys=True).encode()
    fn.source_key = f"{type(fn).__name__}:{hashlib.sha256(blob).hexdigest()[:16]}"
    _ROW_SOURCES[fn.source_key] = fn
    return fn


class LazyRows:
    """A read-only tensor ``fn(base[rows])`` (``rows``: all of ``base`` if ``None``) computed for the
    rows indexed, so derived copies of a data set cost an index instead of a copy.

    ``fn`` must work row by row (row ``i`` of its output depends on row ``i`` of its input only), so
    that a batch equals the same rows of the whole. Indexing (``x[i:j]``, ``x[index_tensor]``,
    ``x[mask]``, ``x[i]``) returns a plain tensor; ``len``, ``shape``, ``dtype``, ``device`` are
    known without computing anything. Any other tensor attribute or ``torch`` function, pickling
    (``torch.save``) and ``TensorData.subset`` see the materialised tensor (a sample store checkpoints rows of a
    registered source by :meth:`reference` instead). With a ``cache`` budget the whole tensor is computed once
    and kept when it fits (for costly ``fn`` such as rotations).
    """

    def __init__(
        self, base: Tensor, fn: Callable[[Tensor], Tensor], rows: Tensor | None = None, cache: CacheBudget | None = None
    ):
        self.base, self.fn, self.rows, self.cache = base, fn, rows, cache
        probe = fn(base[:1])
        n = len(base) if rows is None else len(rows)
        self.shape = torch.Size((n, *probe.shape[1:]))
        self.dtype, self.device = probe.dtype, probe.device
        self._full: Tensor | None = None
        self._cache_refused = cache is None

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def size(self, dim: int | None = None):
        return self.shape if dim is None else self.shape[dim]

    def numel(self) -> int:
        return self.shape.numel()

    def dim(self) -> int:
        return self.ndim

    def _cached(self) -> Tensor | None:
        if self._full is None and not self._cache_refused:
            nbytes = self.numel() * self.dtype.itemsize
            if self.cache.reserve(nbytes):
                self._full = self._compute(slice(None))
            else:
                self._cache_refused = True
        return self._full

    def _compute(self, index) -> Tensor:
        return self.fn(self.base[index] if self.rows is None else self.base[self.rows[index]])

    def __getitem__(self, index) -> Tensor:
        full = self._cached()
        if full is not None:
            return full[index]
        if isinstance(index, tuple):  # x[rows, ...]: the rows first, then the rest on the result
            return self[index[0]][(slice(None), *index[1:])]
        if isinstance(index, int) or (isinstance(index, Tensor) and index.ndim == 0):
            return self._compute(torch.as_tensor([int(index)]))[0]
        return self._compute(index)

    def materialize(self) -> Tensor:
        """The whole tensor (the cached one if kept, else a new one)."""
        return self[:]

    def __getattr__(self, name: str):
        if name.startswith("_"):  # copy / pickle probes and unset private fields
            raise AttributeError(name)
        return getattr(self.materialize(), name)

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        def real(a):
            if isinstance(a, LazyRows):
                return a.materialize()
            return type(a)(real(b) for b in a) if isinstance(a, (list, tuple)) else a

        return func(*real(args), **{k: real(v) for k, v in (kwargs or {}).items()})

    def __reduce_ex__(self, protocol):  # saved (checkpoints of stores holding stream data) as a plain tensor
        return self.materialize().__reduce_ex__(protocol)

    def reference(self) -> dict[str, Any] | None:
        """``{"source": key, "rows": index}`` when this reads rows of a registered source
        (:func:`register_row_source`) by index, else ``None``: what a checkpoint keeps instead of the data."""
        key = getattr(self.fn, "source_key", None)
        if key is None or self.base.dtype != torch.long or self.base.ndim != 1:
            return None
        _ROW_SOURCES.setdefault(key, self.fn)  # one source of that name stays loaded while its data is referred to
        return {"source": key, "rows": (self.base if self.rows is None else self.base[self.rows]).clone()}

    @classmethod
    def from_reference(cls, ref: dict[str, Any]) -> LazyRows:
        """The inputs :meth:`reference` names, read from the source loaded in this process; a source not loaded
        (its files or options changed) or rows it does not have raise ``LookupError`` (a checkpoint is untrusted)."""
        fn, rows = _ROW_SOURCES.get(str(ref.get("source"))), ref.get("rows")
        if fn is None:
            raise LookupError(
                f"data set {ref.get('source')!r} is not loaded by this run (its files or options changed since the "
                "checkpoint was written)"
            )
        if not isinstance(rows, Tensor) or rows.dtype != torch.long or rows.ndim != 1 or not len(rows):
            raise LookupError(f"rows of {ref['source']!r} are not a non-empty 1-D integer tensor")
        if int(rows.min()) < 0 or int(rows.max()) >= len(fn):
            raise LookupError(f"rows of {ref['source']!r} are outside its {len(fn)} rows")
        return cls(rows, fn)

    def __deepcopy__(self, memo) -> LazyRows:  # read-only: a copy may share it
        return self

    def __repr__(self) -> str:
        name = getattr(getattr(self.fn, "func", self.fn), "__name__", "fn")
        return f"LazyRows({name}, shape={tuple(self.shape)}, dtype={self.dtype})"


@dataclass
class TensorData:
    """Inputs ``x``, labels ``y``, global sample ids ``ids`` and task ids ``task`` as aligned tensors.

    ``ids`` index the original data set (train or test) so that subsets remember where
    each sample came from — forget requests and the retrain oracle rely on this.
    """

    x: Tensor
    y: Tensor
    ids: Tensor
    task: Tensor

    def __post_init__(self) -> None:
        n = len(self.y)
        if not (len(self.x) == len(self.ids) == len(self.task) == n):
            raise ValueError("TensorData fields must have the same length")

    @classmethod
    def from_tensors(cls, x: Tensor, y: Tensor, task_id: int = 0) -> TensorData:
        n = len(y)
        return cls(x, y.long(), torch.arange(n), torch.full((n,), task_id, dtype=torch.long))

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, index: Tensor) -> TensorData:
        """Rows selected by a boolean mask or an index tensor."""
        return TensorData(self.x[index], self.y[index], self.ids[index], self.task[index])

    def with_task(self, task_id: int) -> TensorData:
        return TensorData(self.x, self.y, self.ids, torch.full_like(self.task, task_id))

    def classes(self) -> list[int]:
        return sorted(torch.unique(self.y).tolist())

    @staticmethod
    def concat(parts: Sequence[TensorData]) -> TensorData:
        parts = [p for p in parts if p is not None and len(p)]
        if not parts:
            raise ValueError("nothing to concatenate")
        return TensorData(*(torch.cat([getattr(p, f) for p in parts]) for f in ("x", "y", "ids", "task")))


class TensorLoader:
    """Yields ``{"x", "y", "task", "ids"}`` batches by slicing tensors (optionally shuffled).

    Deterministic given ``seed``; each ``iter()`` draws a new permutation from its own
    generator, so epochs differ but a re-run with the same seed is identical. Several processes draw the
    same global batches (the training loop gives each rank its shard: :func:`clframe.distributed.shard`).
    ``transform`` is applied to each batch of inputs (tensor augmentations).
    """

    def __init__(
        self,
        data: TensorData,
        batch_size: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        transform: Callable[[Tensor], Tensor] | None = None,
    ):
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.data, self.batch_size, self.shuffle, self.drop_last = data, batch_size, shuffle, drop_last
        self.transform = transform
        self.generator = torch.Generator().manual_seed(seed)

    def _order(self) -> Tensor:
        n = len(self.data)
        return torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)

    def __len__(self) -> int:
        n = len(self.data)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[dict[str, Tensor]]:
        order = self._order()
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            if self.drop_last and len(idx) < self.batch_size:
                return
            x = self.data.x[idx]
            if self.transform is not None:
                x = self.transform(x)
            yield {"x": x, "y": self.data.y[idx], "task": self.data.task[idx], "ids": self.data.ids[idx]}


@dataclass
class Experience:
    """One event of a stream.

    ``kind="learn"``: train on ``train``; ``test`` is this experience's test split.
    ``kind="forget"``: a forget request; ``forget`` holds the samples to remove and
    ``retain`` the data the strategy may still use; ``removed_classes`` lists every class with no
    learned, unforgotten training sample left after this request (cumulative): the stream no longer
    asks the model to know them, so they leave the CL test columns.
    """

    id: int
    kind: str
    train: TensorData | None
    test: TensorData | None
    classes: list[int]
    task_id: int = 0
    forget: TensorData | None = None
    retain: TensorData | None = None
    name: str = ""
    transform: Callable[[Tensor], Tensor] | None = field(default=None, repr=False)
    removed_classes: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.kind not in ("learn", "forget"):
            raise ValueError(f"Experience.kind={self.kind!r} is invalid; valid choices: learn, forget")
        if not self.name:
            self.name = f"exp_{self.id}"


@dataclass
class Stream:
    """An ordered list of experiences plus what a model needs to know about the data.

    ``setting`` is ``"class"`` (one head, unseen classes masked), ``"task"`` (task id
    given at test time; logits restricted to the task's classes) or ``"domain"``
    (same classes every experience). ``extras`` is what a scenario hands on beyond tensors: a text
    stream's ``tokenizer`` (given to the backbone; its inputs ``x`` are (N, 2, L) token ids and answer
    masks, its classes authors or subjects) and evaluation sets its evaluators read.
    """

    name: str
    experiences: list[Experience]
    n_classes: int
    input_shape: tuple[int, ...]
    setting: str = "class"
    extras: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.setting not in ("class", "task", "domain"):
            raise ValueError(f"scenario.setting={self.setting!r} is invalid; valid choices: class, task, domain")

    def __iter__(self) -> Iterator[Experience]:
        return iter(self.experiences)

    def __len__(self) -> int:
        return len(self.experiences)

    @property
    def learn_experiences(self) -> list[Experience]:
        return [e for e in self.experiences if e.kind == "learn"]

    def forgotten_until(self, position: int) -> Tensor:
        """Sorted unique ids of every sample forgotten by forget events at positions <= ``position``."""
        parts = [e.forget.ids for e in self.experiences[: position + 1] if e.kind == "forget" and e.forget is not None]
        return torch.cat(parts).unique() if parts else torch.zeros(0, dtype=torch.long)


def split_test(exp) -> tuple[TensorData, TensorData | None]:
    """A forget event's test data split into (classes still retained, classes this request removed
    entirely). Classes with no retain sample left (forgotten now or earlier) leave the first part."""
    retained = torch.tensor(
        exp.retain.classes() if exp.retain is not None and len(exp.retain) else [], dtype=torch.long
    )
    gone_now = torch.tensor([c for c in exp.forget.classes() if c not in retained.tolist()], dtype=torch.long)
    keep = exp.test.subset(torch.isin(exp.test.y, retained))
    now = exp.test.subset(torch.isin(exp.test.y, gone_now))
    return keep, (now if len(now) else None)
