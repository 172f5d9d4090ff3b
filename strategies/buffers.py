"""Replay memory shared by rehearsal methods (replay, ER, DER++, iCaRL, CL2R, ...)."""

from __future__ import annotations

import torch
from torch import Tensor

from clframe.distributed import gather
from clframe.errors import ConfigError
from clframe.stream import TensorData, TensorLoader

POLICIES = ("reservoir", "class_balanced")


def replay_batch(key: str, value: int | None, default: int) -> int:
    """Memory samples per step from option ``strategy.<key>``: a positive integer, or ``default`` when null."""
    if value is None:
        return default
    if value <= 0:
        raise ConfigError(f"strategy.{key}", value, "a positive integer, or null for the batch size")
    return int(value)


class ReplayBuffer:
    """A fixed-capacity memory of samples (inputs, labels, ids, task ids, optional extras such as logits).

    ``reservoir``: every sample seen so far has the same chance ``capacity / seen`` to be in
    memory (Vitter 1985). ``class_balanced``: the memory is split equally over the classes
    seen so far; each class keeps a random subset of its samples.
    All randomness comes from the ``generator`` passed in, so runs are reproducible.
    """

    def __init__(self, capacity: int, policy: str = "reservoir"):
        if capacity is None or int(capacity) <= 0:
            raise ConfigError("strategy.buffer_size", capacity, "a positive number of samples")
        if policy not in POLICIES:
            raise ConfigError("strategy.buffer_policy", policy, POLICIES)
        self.capacity, self.policy = int(capacity), policy
        self.data: TensorData | None = None
        self.extra: dict[str, Tensor] = {}
        self.n_seen = 0

    def __len__(self) -> int:
        return 0 if self.data is None else len(self.data)

    def add(self, data: TensorData, generator: torch.Generator, extra: dict[str, Tensor] | None = None) -> None:
        """Offer every sample of ``data`` to the memory (``extra``: per-sample tensors kept alongside)."""
        extra = extra or {}
        if self.policy == "reservoir":
            self._add_reservoir(data, extra, generator)
        else:
            merged = data if self.data is None else TensorData.concat([self.data, data])
            merged_extra = {k: torch.cat([self.extra[k], v]) if self.extra else v for k, v in extra.items()}
            self._keep(self._balanced_index(merged.y, generator), merged, merged_extra)
        self.n_seen += len(data)

    def _add_reservoir(self, data: TensorData, extra: dict[str, Tensor], gen: torch.Generator) -> None:
        n_free = max(0, self.capacity - len(self))
        fill = min(n_free, len(data))
        if fill:
            head = data.subset(torch.arange(fill))
            self.data = head if self.data is None else TensorData.concat([self.data, head])
            for k, v in extra.items():
                self.extra[k] = torch.cat([self.extra[k], v[:fill]]) if k in self.extra else v[:fill].clone()
        # remaining samples: sample j (0-based count of seen) replaces a random slot with prob capacity/(j+1)
        rest = torch.arange(fill, len(data))
        if not len(rest):
            return
        seen_index = self.n_seen + rest
        slots = (torch.rand(len(rest), generator=gen, dtype=torch.float32) * (seen_index + 1).float()).long()
        hit = slots < self.capacity
        # a later sample that lands on the same slot overwrites an earlier one (sequential semantics)
        last = dict(zip(slots[hit].tolist(), rest[hit].tolist()))
        if last:
            dst, src = torch.tensor(list(last.keys())), torch.tensor(list(last.values()))
            for f in ("x", "y", "ids", "task"):
                getattr(self.data, f)[dst] = getattr(data, f)[src]
            for k, v in extra.items():
                self.extra[k][dst] = v[src]

    def _balanced_index(self, y: Tensor, gen: torch.Generator) -> Tensor:
        classes = torch.unique(y)
        per_class = self.capacity // len(classes)
        spare = self.capacity - per_class * len(classes)
        keep = []
        for i, c in enumerate(classes.tolist()):
            idx = (y == c).nonzero().squeeze(1)
            idx = idx[torch.randperm(len(idx), generator=gen)]
            keep.append(idx[: per_class + (1 if i < spare else 0)])
        return torch.cat(keep).sort().values

    def _keep(self, index: Tensor, data: TensorData, extra: dict[str, Tensor]) -> None:
        self.data = data.subset(index)
        self.extra = {k: v[index] for k, v in extra.items()}

    def ids(self) -> Tensor:
        """Ids of the samples held (a :class:`clframe.stores.SampleStore`)."""
        return self.data.ids if self.data is not None else torch.zeros(0, dtype=torch.long)

    def forget(self, ids: Tensor) -> int:
        """Drop these samples and their extras (e.g. DER's stored logits); return how many were held."""
        if self.data is None:
            return 0
        keep = ~torch.isin(self.data.ids, ids.to(self.data.ids.device))
        self.data, self.extra = self.data.subset(keep), {k: v[keep] for k, v in self.extra.items()}
        return int((~keep).sum())

    def sample(self, n: int, generator: torch.Generator) -> tuple[TensorData, dict[str, Tensor]]:
        """``n`` random samples (without replacement when possible) and their extras."""
        idx = torch.randperm(len(self), generator=generator)[:n]
        return self.data.subset(idx), {k: v[idx] for k, v in self.extra.items()}

    def state(self) -> dict:
        data = None if self.data is None else vars(self.data).copy()
        return {"data": data, "extra": dict(self.extra), "n_seen": self.n_seen}

    def load(self, state: dict) -> None:
        self.data = None if state.get("data") is None else TensorData(**state["data"])
        self.extra, self.n_seen = dict(state.get("extra", {})), int(state.get("n_seen", 0))


class ReplayLoader:
    """Wraps a :class:`~clframe.stream.TensorLoader`: each batch gets a ``"replay"`` entry with
    ``replay_batch_size`` random memory samples (``x, y, task, ids`` and the buffer's extras)."""

    def __init__(self, loader, buffer: ReplayBuffer, replay_batch_size: int, seed: int):
        self.loader, self.buffer, self.n = loader, buffer, replay_batch_size
        self.generator = torch.Generator().manual_seed(seed + 7919)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for batch in self.loader:
            if len(self.buffer):
                mem, extra = self.buffer.sample(self.n, self.generator)
                batch["replay"] = {"x": mem.x, "y": mem.y, "task": mem.task, "ids": mem.ids, **extra}
            yield batch


# --------------------------------------------------------------- online rehearsal (ER, DER++, ER-ACE) and iCaRL
HOST = torch.device("cpu")  # memory lives in host memory next to the stream data; batches move to the device


class OnlineMemory:
    """A reservoir :class:`ReplayBuffer` offered every incoming batch (ER, DER++, ER-ACE, as in Mammoth).

    :meth:`loader` yields stream batches *without* augmentation, each with ``minibatch_size``
    memory samples, so the memory keeps un-augmented inputs; the method augments both halves with
    :meth:`augment` (``exp.transform``, on the batch's device) and calls :meth:`remember` on the
    incoming batch (with extras such as logits). Reservoir randomness is seeded per experience."""

    def __init__(self, buffer_size: int, minibatch_size: int):
        self.buffer = ReplayBuffer(buffer_size, "reservoir")
        self.minibatch_size = minibatch_size
        self.transform, self.generator = None, torch.Generator()

    def loader(self, exp, batch_size: int, seed: int, draws: int = 1) -> ReplayLoader:
        """``draws`` memory batches per step, drawn together (without replacement) in ``batch["replay"]``."""
        self.transform, self.generator = exp.transform, torch.Generator().manual_seed(seed + 1)
        stream = TensorLoader(exp.train, batch_size, shuffle=True, seed=seed)
        return ReplayLoader(stream, self.buffer, draws * self.minibatch_size, seed)

    def augment(self, x: Tensor) -> Tensor:
        return x if self.transform is None else self.transform(x)

    def remember(self, batch: dict[str, Tensor], **extra: Tensor) -> None:
        """Offer the incoming batch (with per-sample ``extra``, e.g. logits). Under DDP each rank holds a shard:
        the memory is offered the all-gathered batch, in the single-process order, on every rank."""
        data = TensorData(*(gather(batch[k].detach()).to(HOST) for k in ("x", "y", "ids", "task")))
        self.buffer.add(data, self.generator, {k: gather(v.detach()).float().to(HOST) for k, v in extra.items()})

    def ids(self) -> Tensor:
        return self.buffer.ids()

    def forget(self, ids: Tensor) -> int:
        return self.buffer.forget(ids)

    def state(self) -> dict:
        return self.buffer.state()

    def load(self, state: dict) -> None:
        self.buffer.load(state)


def herding(features: Tensor, m: int) -> Tensor:
    """Indices of ``m`` samples chosen greedily so that the running mean of their (L2-normalised)
    features stays closest to the class mean (iCaRL, Rebuffi et al. 2017, Alg. 4); in selection order."""
    feats = torch.nn.functional.normalize(features.float(), dim=1)
    mu = feats.mean(0)
    chosen: list[int] = []
    total = torch.zeros_like(mu)
    available = torch.ones(len(feats), dtype=torch.bool, device=feats.device)
    for k in range(1, min(m, len(feats)) + 1):
        dist = (mu - (total + feats) / k).norm(dim=1).masked_fill(~available, float("inf"))
        i = int(dist.argmin())
        chosen.append(i)
        total += feats[i]
        available[i] = False
    return torch.tensor(chosen, dtype=torch.long)
