"""Sample stores: the contract for anything a strategy keeps that holds training samples.

A *sample store* (replay buffer, online memory, exemplar set, Joint's past data, stored logits, a
feature bank) can list the global ids of the samples it holds and forget some of them. A strategy
declares its stores by name (:meth:`clframe.strategy.Strategy.register_store`); the base class
checkpoints them, and after every forget request the runner purges every store and then *verifies*
(:func:`purge_and_verify`): if any forgotten id is still reachable from the strategy — in a declared
store or in any :class:`~clframe.stream.TensorData` hanging off its attributes — the run fails with
:class:`ForgetLeakError`. Training loaders are guarded too (:class:`WatchedLoader`): a batch that
carries a forgotten id after its request stops the run.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from clframe.data import lazy_concat, lazy_subset
from clframe.errors import CheckpointError
from clframe.stream import LazyRows, TensorData


class ForgetLeakError(RuntimeError):
    """A forgotten sample is still held by, or fed to, a strategy after its forget request."""


@runtime_checkable
class SampleStore(Protocol):
    """What every sample store implements (duck-typed; ``isinstance`` works)."""

    def ids(self) -> Tensor:
        """Global ids of the training samples held (any order, duplicates allowed)."""

    def forget(self, ids: Tensor) -> int:
        """Remove every sample whose id is in ``ids`` (and anything stored per sample); return how many."""

    def state(self) -> dict[str, Any]:
        """Tensors / plain containers that restore the store (checkpointed by the base class)."""

    def load(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state`."""


class DataStore:
    """Training samples kept as they are (Joint's past data, iCaRL's exemplars, LoRA-joint's past data).

    Disk-backed inputs (a :class:`~clframe.stream.LazyRows` over a registered source: ImageFolder files, an
    Avalanche data set read per batch) stay on disk: forgetting selects rows without reading them and a
    checkpoint keeps the row indices, not the images; resume reads them from the data set the run loads."""

    def __init__(self) -> None:
        self.parts: list[TensorData] = []

    def __len__(self) -> int:
        return sum(len(p) for p in self.parts)

    def add(self, data: TensorData) -> None:
        if data is not None and len(data):
            self.parts.append(data)

    def replace(self, data: TensorData | None) -> None:
        self.parts = []
        self.add(data)

    def data(self) -> TensorData | None:
        """Everything held, concatenated (``None`` when empty; disk-backed parts stay lazy)."""
        return lazy_concat(self.parts) if len(self) else None

    def ids(self) -> Tensor:
        return torch.cat([p.ids for p in self.parts]) if self.parts else torch.zeros(0, dtype=torch.long)

    def forget(self, ids: Tensor) -> int:
        before = len(self)
        self.parts = [lazy_subset(p, ~torch.isin(p.ids, ids.to(p.ids.device))) for p in self.parts]
        self.parts = [p for p in self.parts if len(p)]
        return before - len(self)

    def state(self) -> dict[str, Any]:
        parts = []
        for p in self.parts:
            ref = p.x.reference() if isinstance(p.x, LazyRows) else None
            parts.append(vars(p).copy() if ref is None else {**vars(p), "x": None, "x_ref": ref})
        return {"parts": parts}

    def load(self, state: dict[str, Any]) -> None:
        parts = []
        for p in state.get("parts", []):
            p = dict(p)
            if "x_ref" in p:
                try:
                    p["x"] = LazyRows.from_reference(p.pop("x_ref"))
                except LookupError as err:
                    raise CheckpointError(
                        f"a sample store's checkpointed rows: {err}; delete the checkpoint to restart"
                    ) from None
            parts.append(TensorData(**p))
        self.parts = parts


# ------------------------------------------------------------------ verification
SKIP_ATTRS = {"unlearner", "experience", "_trainer", "_fabric", "_fabric_optimizers", "_device_mesh"}


def reachable_data(strategy) -> list[tuple[str, Tensor]]:
    """``(path, ids)`` of every :class:`TensorData` reachable from the strategy's attributes (containers,
    plain objects and sub-modules are followed). Skipped: ``unlearner`` (it holds the forget set by design)
    and ``experience`` (the runner drops it at a forget event)."""
    found: list[tuple[str, Tensor]] = []
    seen: set[int] = set()

    def walk(obj: Any, path: str, depth: int) -> None:
        if depth > 8 or id(obj) in seen or obj is None or isinstance(obj, (Tensor, str, bytes, int, float, bool)):
            return
        seen.add(id(obj))
        if isinstance(obj, TensorData):
            found.append((path, obj.ids))
        elif isinstance(obj, dict):
            for k, v in obj.items():
                walk(v, f"{path}[{k!r}]", depth + 1)
        elif isinstance(obj, (list, tuple, set)):
            for i, v in enumerate(obj):
                walk(v, f"{path}[{i}]", depth + 1)
        elif isinstance(obj, nn.Module):
            for k, v in vars(obj).items():
                if k == "_modules":
                    for name, sub in v.items():
                        walk(sub, f"{path}.{name}", depth + 1)
                elif not k.startswith("_") and k not in SKIP_ATTRS:
                    walk(v, f"{path}.{k}", depth + 1)
            stores = getattr(obj, "_stores", None)
            if isinstance(stores, dict):
                for name, store in stores.items():
                    walk(store, f"{path}.store[{name!r}]", depth + 1)
        elif hasattr(obj, "__dict__") and not callable(obj) and not isinstance(obj, torch.Generator):
            for k, v in vars(obj).items():
                if k not in SKIP_ATTRS:
                    walk(v, f"{path}.{k}", depth + 1)

    walk(strategy, "strategy", 0)
    return found


def held_forgotten(strategy, forgotten: Tensor) -> dict[str, int]:
    """Where forgotten ids are still held: ``{place: number of forgotten ids}`` (empty when clean)."""
    forgotten = forgotten.cpu()
    out: dict[str, int] = {}
    for name, store in strategy.sample_stores().items():
        n = int(torch.isin(store.ids().cpu(), forgotten).sum())
        if n:
            out[f"store {name!r}"] = n
    for path, ids in reachable_data(strategy):
        n = int(torch.isin(ids.cpu(), forgotten).sum())
        if n:
            out[path] = n
    return out


def purge_and_verify(strategy, exp, forgotten: Tensor) -> dict[str, Any]:
    """Remove ``exp.forget`` from every declared store, let the strategy refresh derived state
    (``after_forget``), drop its reference to the last experience, then check that no id in ``forgotten``
    (everything forgotten so far) is reachable. Returns the record written to ``metrics.json``."""
    ids = exp.forget.ids.cpu()
    purged = {name: int(store.forget(ids)) for name, store in strategy.sample_stores().items()}
    strategy.after_forget(exp)
    strategy.experience = None
    leaks = held_forgotten(strategy, forgotten)
    if leaks:
        where = ", ".join(f"{k} ({v})" for k, v in leaks.items())
        raise ForgetLeakError(
            f"after forget request {exp.name}, forgotten samples are still held by {type(strategy).__name__}: "
            f"{where}. Declare every sample store with Strategy.register_store (clframe.stores.SampleStore)"
        )
    return {"purged": purged, "derived_state": dict(strategy.derived_state)}


def answer_forget_request(strategy, exp, forgotten: Tensor) -> dict[str, Any]:
    """The strategy answers ``exp`` (exactly or with its unlearner), then :func:`purge_and_verify`."""
    answer = strategy.unlearn(exp)
    return {"answer": answer, **purge_and_verify(strategy, exp, forgotten)}


class WatchedLoader:
    """Wraps a training loader: records the ids of every sample fed (``record``: a list to append to) and
    raises :class:`ForgetLeakError` when a batch (or its ``"replay"`` part) carries a ``forbidden`` id."""

    def __init__(self, loader, forbidden: Tensor | None = None, record: list[Tensor] | None = None):
        self.loader, self.record = loader, record
        self.forbidden = None if forbidden is None or not len(forbidden) else forbidden.cpu()

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for batch in self.loader:
            parts = [batch["ids"]] + ([batch["replay"]["ids"]] if "ids" in batch.get("replay", {}) else [])
            for ids in parts:
                ids = ids.detach().cpu()
                if self.record is not None:
                    self.record.append(ids)
                if self.forbidden is not None and bool(torch.isin(ids, self.forbidden).any()):
                    bad = ids[torch.isin(ids, self.forbidden)][:10].tolist()
                    raise ForgetLeakError(f"a training batch carries forgotten samples (ids {bad})")
            yield batch
