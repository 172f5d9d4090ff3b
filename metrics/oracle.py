"""The retrain oracle: the same strategy trained from scratch on the same stream with every sample
forgotten so far removed from every learn experience (same config, seed and per-event schedule).

The oracle for a forget event at stream position ``p`` learns the learn experiences before ``p``,
without the ids forgotten at or before ``p``. It is cached on disk under a hash of (config without
``unlearning`` / ``evaluators`` / output keys, the learn experiences, the forgotten ids), so several
unlearning methods run on the same stream share one oracle. It records the ids of every training
sample it was fed (including replayed ones) and refuses to return if any of them was forgotten.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from clframe.io import atomic_torch_save
from clframe.pretrain import run_pretraining
from clframe.runner import build_strategy, learn_experience, start_event
from clframe.stores import WatchedLoader
from clframe.stream import Experience, Stream

log = logging.getLogger("clframe")
NOT_PART_OF_TRAINING = ("run_dir", "resume", "logger", "progress_bar", "plots", "evaluators", "unlearning", "hydra")


def oracle_experiences(stream: Stream, position: int) -> list[Experience]:
    """The learn experiences before ``position`` without any sample forgotten up to ``position``."""
    gone = stream.forgotten_until(position)
    out = []
    for e in stream.experiences[:position]:
        if e.kind == "learn":
            out.append(dataclasses.replace(e, train=e.train.subset(~torch.isin(e.train.ids, gone))))
    return out


def training_config(cfg: DictConfig) -> DictConfig:
    """``cfg`` without what does not change the oracle's training (outputs, evaluators, unlearning)."""
    node = OmegaConf.to_container(cfg, resolve=True)
    for key in NOT_PART_OF_TRAINING:
        node.pop(key, None)
    return OmegaConf.create(node)


def oracle_key(cfg: DictConfig, exps: list[Experience], forgotten: torch.Tensor) -> str:
    h = hashlib.sha256(OmegaConf.to_yaml(training_config(cfg), sort_keys=True).encode())
    h.update(repr([(e.id, e.name, len(e.train)) for e in exps]).encode())
    h.update(forgotten.numpy().tobytes())
    return h.hexdigest()[:20]


def train_oracle(
    cfg: DictConfig, stream: Stream, position: int, *, cache_dir: str | Path | None = None
) -> tuple[Any, dict]:
    """Return ``(oracle strategy, info)`` for the forget event at ``position`` (trained or loaded from cache).

    ``info``: ``key``, ``cached``, ``trained_ids`` (unique ids the oracle was fed), ``forgotten`` ids."""
    train_cfg = training_config(cfg)
    exps = oracle_experiences(stream, position)
    gone = stream.forgotten_until(position)
    key = oracle_key(cfg, exps, gone)
    strategy = build_strategy(train_cfg, stream)
    path = Path(cache_dir) / f"oracle_{key}.pt" if cache_dir else None
    if path is not None and path.is_file():
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        strategy.restore_checkpoint_state(ckpt["extra"])
        strategy.load_state_dict(ckpt["model"])
        return strategy, {"key": key, "cached": True, "trained_ids": ckpt["trained_ids"], "forgotten": gone}
    if train_cfg.get("pretrain"):
        run_pretraining(strategy, train_cfg.pretrain, stream, seed=int(cfg.seed), run_dir=Path(cache_dir or ".") / key)
    seen: list[torch.Tensor] = []
    fit_cfg = OmegaConf.merge(train_cfg, {"progress_bar": cfg.get("progress_bar", "tqdm")})  # the run's bar setting
    for exp in exps:
        start_event(strategy, int(cfg.seed), exp)
        learn_experience(fit_cfg, strategy, exp, wrap_loader=lambda loader: WatchedLoader(loader, gone, seen))
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
