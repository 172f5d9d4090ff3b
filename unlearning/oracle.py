"""The retrain oracle: the same strategy trained from scratch on the same stream with every sample
forgotten so far removed from every learn experience (same config, seed and per-event schedule).

The oracle for a forget event at stream position ``p`` learns the learn experiences before ``p``,
without the ids forgotten at or before ``p``. It is cached on disk under a hash of (config without
``unlearning`` / ``evaluators`` / output keys, a hash of the training data, the forgotten ids, the clframe /
torch versions and the method's source files), so several unlearning methods run on the same stream share
one oracle when they share a cache folder (evaluator option ``oracle_cache``; default
``<run_dir>/oracle_cache``); an unreadable cached file is retrained. It records the ids of every training
sample it was fed (including replayed ones) and refuses to return if any of them was forgotten.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import logging
from pathlib import Path
from typing import Any

import torch

import clframe
from clframe import fit
from clframe.evaluation import RunContext
from clframe.io import atomic_torch_save
from clframe.runner import start_event
from clframe.stores import WatchedLoader
from clframe.stream import Experience, Stream

log = logging.getLogger("clframe")


def oracle_experiences(stream: Stream, position: int) -> list[Experience]:
    """The learn experiences before ``position`` without any sample forgotten up to ``position``."""
    gone = stream.forgotten_until(position)
    out = []
    for e in stream.experiences[:position]:
        if e.kind == "learn":
            out.append(dataclasses.replace(e, train=e.train.subset(~torch.isin(e.train.ids, gone))))
    return out


def data_digest(exps: list[Experience], chunk: int = 4096) -> str:
    """A hash of the oracle's training data (inputs, labels, ids, task ids): a changed data file is a new key."""
    h = hashlib.sha256()
    for e in exps:
        h.update(repr((e.id, e.name, len(e.train))).encode())
        for i in range(0, len(e.train), chunk):
            part = e.train.subset(torch.arange(i, min(i + chunk, len(e.train))))
            for t in (part.x, part.y, part.ids, part.task):
                h.update(t.contiguous().cpu().numpy().tobytes())
    return h.hexdigest()


def code_version(strategy) -> str:
    """clframe and torch versions and a hash of the source files of the strategy's classes and the training
    loop: edited method code is a new key, never a stale cached oracle."""
    files = {inspect.getsourcefile(c) for c in type(strategy).__mro__ if c.__module__.startswith("clframe")}
    h = hashlib.sha256(f"{clframe.__version__} {torch.__version__}".encode())
    for path in sorted(f for f in files | {inspect.getsourcefile(fit)} if f):
        h.update(Path(path).read_bytes())
    return h.hexdigest()


def oracle_key(training_key: str, exps: list[Experience], forgotten: torch.Tensor, strategy) -> str:
    """The cache key: the run's training identity (:attr:`~clframe.evaluation.RunContext.training_key`),
    the training data, the forgotten ids and the code version of ``strategy``."""
    h = hashlib.sha256(training_key.encode())
    h.update(data_digest(exps).encode())
    h.update(forgotten.numpy().tobytes())
    h.update(code_version(strategy).encode())
    return h.hexdigest()[:20]


def _load_cached(path: Path) -> dict | None:
    """A cached oracle, or ``None`` (and the file removed, with a warning) if it cannot be read."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(ckpt, dict) and {"model", "extra", "trained_ids"} <= set(ckpt):
            return ckpt
    except Exception as err:  # noqa: BLE001  (any damage: the oracle is retrained)
        log.warning("cached oracle %s is unreadable (%s); retraining it", path, type(err).__name__)
    path.unlink(missing_ok=True)
    return None


def train_oracle(
    context: RunContext, stream: Stream, position: int, *, cache_dir: str | Path | None = None
) -> tuple[Any, dict]:
    """Return ``(oracle strategy, info)`` for the forget event at ``position`` (trained or loaded from cache),
    through the run's injected strategy factory and learn step (``context``), never the config.

    ``info``: ``key``, ``cached``, ``trained_ids`` (unique ids the oracle was fed), ``forgotten`` ids."""
    exps = oracle_experiences(stream, position)
    gone = stream.forgotten_until(position)
    strategy = context.new_strategy(None)
    key = oracle_key(context.training_key, exps, gone, strategy)
    path = Path(cache_dir) / f"oracle_{key}.pt" if cache_dir else None
    ckpt = _load_cached(path) if path is not None and path.is_file() else None
    if ckpt is not None:
        strategy.restore_checkpoint_state(ckpt["extra"])
        strategy.load_state_dict(ckpt["model"])
        return strategy, {"key": key, "cached": True, "trained_ids": ckpt["trained_ids"], "forgotten": gone}
    strategy = context.new_strategy(Path(cache_dir or context.run_dir) / key)  # pretrained as the run was
    seen: list[torch.Tensor] = []
    for exp in exps:
        start_event(strategy, context.seed, exp)
        context.learn(strategy, exp, wrap_loader=lambda loader: WatchedLoader(loader, gone, seen))
    strategy.cpu()
    trained = torch.cat(seen).unique() if seen else torch.zeros(0, dtype=torch.long)
    leaked = trained[torch.isin(trained, gone)]
    if len(leaked):  # cannot happen unless a strategy smuggles data in from elsewhere
        raise RuntimeError(f"the retrain oracle was fed {len(leaked)} forgotten samples (ids {leaked[:10].tolist()})")
    if path is not None:
        atomic_torch_save(
            {
                "model": strategy.state_dict(),
                "extra": strategy.checkpoint_state(),
                "trained_ids": trained,
                "key": key,
            },
            path,
        )
    return strategy, {"key": key, "cached": False, "trained_ids": trained, "forgotten": gone}
