"""Pretraining stage run before the stream (config key ``pretrain``), with a leakage guard.

``run_pretraining`` trains the strategy's backbone with a temporary linear head on a data set /
class subset (or loads a backbone saved earlier from ``path``), optionally freezes it, and checks
that neither the pretraining classes nor the pretraining samples appear in the stream: a
pretrained model that already saw the stream's data makes continual-learning numbers meaningless
(the "information leakage" that DESIRE and the NMC baseline paper point out). Overlap is an error
unless ``pretrain.allow_overlap=true``, and is then recorded in ``metrics.json["pretrain"]``.

Disk-backed data sets (``imagefolder``) are never read whole: the pretraining subset stays lazy, training
reads it batch by batch and the content hashes of the leakage check are computed :data:`HASH_CHUNK` rows at a
time. The class check compares pretraining and stream classes when both name the same data set by name; a
data set given as a mapping (``{name: imagefolder, path: ...}``) is checked by content only.

Config node (every key optional except ``dataset`` or ``path``)::

    pretrain:
      dataset: mnist        # registered data set (clframe.data), train split; or {name: imagefolder, path: ...}
      classes: [0, 1, 2, 3, 4]   # class subset (null = all classes of the data set)
      max_samples: null     # seeded random subset of that, for CPU budgets
      epochs: 1
      lr: 0.01
      batch_size: 128
      optimizer: sgd        # sgd | adam | adamw
      momentum: 0.9
      weight_decay: 0.0
      path: null            # load a backbone saved by an earlier run instead of training
      save: true            # write run_dir/checkpoints/pretrained_backbone.pt (reusable as `path`)
      freeze: false         # backbone parameters fixed and kept in eval mode during the stream
      allow_overlap: false  # accept class / sample overlap with the stream (recorded)
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from clframe.data import dataset_names, lazy_subset, load_dataset
from clframe.errors import ConfigError
from clframe.fit import Engine
from clframe.io import atomic_torch_save
from clframe.optim import check_optimizer, make_optimizer
from clframe.stream import Stream, TensorData

log = logging.getLogger("clframe")
KEYS = {
    "dataset": None,
    "classes": None,
    "max_samples": None,
    "epochs": 1,
    "lr": 0.01,
    "batch_size": 128,
    "optimizer": "sgd",
    "momentum": 0.9,
    "weight_decay": 0.0,
    "path": None,
    "save": True,
    "freeze": False,
    "allow_overlap": False,
}
SAVED_NAME = "checkpoints/pretrained_backbone.pt"
HASH_CHUNK = 1024  # rows read at a time by the leakage check


def sample_hashes(data: TensorData, chunk: int | None = None) -> set[int]:
    """64-bit content hashes of the inputs (exact duplicates collide; different images do not), computed
    ``chunk`` rows at a time: a disk-backed data set (:class:`~clframe.stream.LazyRows`) is read batch by batch,
    never whole (``chunk``: :data:`HASH_CHUNK` rows unless given)."""
    chunk = chunk or HASH_CHUNK
    hashes: set[int] = set()
    for start in range(0, len(data), chunk):
        rows = data.x[start : start + chunk].detach().cpu().contiguous().numpy()
        digest = (hashlib.blake2b(r.tobytes(), digest_size=8).digest() for r in rows.reshape(len(rows), -1))
        hashes.update(int.from_bytes(d, "little", signed=True) for d in digest)
    return hashes


def stream_dataset(stream: Stream) -> str | None:
    """The registered data set a stream was built from (``stream.dataset``, else its name's suffix)."""
    name = getattr(stream, "dataset", None) or stream.name.split("_", 1)[-1]
    return name if name in dataset_names() else None


def check_leakage(
    stream: Stream, *, dataset: str | None, classes: list[int], hashes: set[int] | None, allow_overlap: bool
) -> dict[str, Any]:
    """Compare pretraining classes (same data set only) and samples (by content) with the stream's."""
    same = dataset is not None and dataset == stream_dataset(stream)
    stream_classes = sorted({c for e in stream.learn_experiences for c in e.classes})
    class_overlap = sorted(set(classes) & set(stream_classes)) if same else []
    n_samples = 0
    if hashes is not None:
        for e in stream.learn_experiences:
            for part in (e.train, e.test):
                if part is not None and len(part):
                    n_samples += len(sample_hashes(part) & hashes)
    report = {
        "same_dataset": same,
        "classes": class_overlap,
        "samples": n_samples,
        "samples_checked": hashes is not None,
    }
    if (class_overlap or n_samples) and not allow_overlap:
        raise ConfigError(
            "pretrain.classes",
            classes,
            hint=(
                f"pretraining on {dataset} leaks into the stream: {len(class_overlap)} shared classes "
                f"{class_overlap} and "
                f"{n_samples} identical samples in the stream's train/test data (stream classes {stream_classes}). "
                "Pretrain on classes / data disjoint from the stream (e.g. pretrain.classes=[0,1,2,3,4] and "
                "scenario.classes=[5,6,7,8,9]) or set "
                "pretrain.allow_overlap=true to accept it (it is then recorded in metrics.json['pretrain'])"
            ),
        )
    return report


def freeze(backbone: nn.Module) -> None:
    """Fix the parameters and keep the module in eval mode (BatchNorm statistics, dropout) for good."""
    backbone.requires_grad_(False)
    backbone.eval()
    # Lightning switches the whole strategy to train mode at fit start: this module ignores it
    backbone.train = types.MethodType(_eval_only, backbone)


def _eval_only(module: nn.Module, mode: bool = True) -> nn.Module:
    return nn.Module.train(module, False)


def pretraining_data(node: Mapping[str, Any], seed: int) -> tuple[TensorData, list[int]]:
    train, _ = load_dataset(node["dataset"])
    classes = train.classes() if node["classes"] is None else sorted(int(c) for c in node["classes"])
    unknown = sorted(set(classes) - set(train.classes()))
    if unknown or not classes:
        raise ConfigError("pretrain.classes", node["classes"], train.classes(), hint=f"unknown classes {unknown}")
    data = lazy_subset(train, torch.isin(train.y, torch.as_tensor(classes)))  # disk-backed data stays on disk
    if node["max_samples"]:
        idx = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[: int(node["max_samples"])]
        data = lazy_subset(data, idx.sort().values)
    return data, classes


def train_backbone(
    backbone: nn.Module, data: TensorData, node: Mapping[str, Any], seed: int, engine: Engine | None = None
) -> dict[str, float]:
    """Cross-entropy training of ``backbone`` + a temporary linear head (discarded afterwards), with the run's
    engine (its device, precision and progress bar; default: CUDA if available, 32-bit)."""
    engine = engine or Engine.default()
    device = engine.device
    head = nn.Linear(backbone.num_features, int(data.y.max()) + 1)
    backbone.to(device).train()
    head.to(device)
    params = [p for p in backbone.parameters() if p.requires_grad] + list(head.parameters())
    opt = make_optimizer(
        params, node["optimizer"], lr=node["lr"], momentum=node["momentum"], weight_decay=node["weight_decay"],
        key="pretrain.optimizer",
    )  # fmt: skip
    gen, bs, epochs = torch.Generator().manual_seed(seed + 1), int(node["batch_size"]), int(node["epochs"])
    stats = {"loss_sum": 0.0, "correct": 0, "seen": 0}

    def batches():
        for _ in range(epochs):
            stats.update(loss_sum=0.0, correct=0, seen=0)  # report the last epoch
            yield from torch.randperm(len(data), generator=gen).split(bs)

    def loss_of(idx):
        x, y = data.x[idx].to(device), data.y[idx].to(device)
        out = head(backbone.forward_features(x))
        loss = F.cross_entropy(out, y)
        stats["loss_sum"] += float(loss.detach()) * len(y)
        stats["correct"] += int((out.argmax(1) == y).sum())
        stats["seen"] += len(y)
        return loss

    engine.optimize(opt, batches(), loss_of, total=epochs * -(-len(data) // bs), desc="pretraining")
    backbone.eval()
    seen = max(stats["seen"], 1)
    return {"train_loss": stats["loss_sum"] / seen, "train_acc": stats["correct"] / seen}


def _node(node: Mapping[str, Any]) -> dict[str, Any]:
    node = dict(node)
    unknown = sorted(set(node) - set(KEYS))
    if unknown:
        raise ConfigError(f"pretrain.{unknown[0]}", node[unknown[0]], sorted(KEYS), hint="unknown pretraining option")
    node = {**KEYS, **node}
    if not node["dataset"] and not node["path"]:
        raise ConfigError("pretrain.dataset", None, hint="give a registered data set to pretrain on, or pretrain.path")
    if not isinstance(node["epochs"], int) or isinstance(node["epochs"], bool) or node["epochs"] < 0:
        raise ConfigError("pretrain.epochs", node["epochs"], "a non-negative integer")
    return node


def run_pretraining(
    strategy, node: Mapping[str, Any], stream: Stream, *, seed: int, run_dir: str | Path
) -> dict[str, Any]:
    """Pretrain (or load) ``strategy.backbone`` before the stream; return what ``metrics.json`` records.

    Raises :class:`ConfigError` when pretraining classes / samples overlap the stream and
    ``allow_overlap`` is false. The returned dict is also what :func:`restore_pretraining` needs on resume.
    """
    from omegaconf import DictConfig, OmegaConf

    if isinstance(node, DictConfig):
        node = OmegaConf.to_container(node, resolve=True)
    node = _node(node)
    t0 = time.perf_counter()
    info: dict[str, Any] = {k: node[k] for k in ("dataset", "path", "freeze", "allow_overlap")}
    if node["path"]:
        hashes, classes = _load(strategy.backbone, Path(node["path"]), node, info)
        info.update(source="loaded", classes=classes)
        info["overlap"] = check_leakage(
            stream, dataset=info["dataset"], classes=classes, hashes=hashes, allow_overlap=node["allow_overlap"]
        )
    else:
        torch.manual_seed(seed)
        data, classes = pretraining_data(node, seed)
        hashes = sample_hashes(data)
        info.update(source="trained", classes=classes, n_samples=len(data), epochs=int(node["epochs"]))
        info["overlap"] = check_leakage(  # before training: fail fast
            stream, dataset=node["dataset"], classes=classes, hashes=hashes, allow_overlap=node["allow_overlap"]
        )
        engine = getattr(strategy, "engine", None)  # the run's device (trainer.accelerator), as the stream's training
        info.update(train_backbone(strategy.backbone, data, node, seed, engine))
        if node["save"]:
            meta = {"dataset": node["dataset"], "classes": classes, "hashes": torch.tensor(sorted(hashes))}
            out = Path(run_dir) / SAVED_NAME
            atomic_torch_save({"backbone": strategy.backbone.state_dict(), "pretrain": meta}, out)
            info["saved_to"] = str(out)
    if node["freeze"]:
        freeze(strategy.backbone)
    info["seconds"] = time.perf_counter() - t0
    log.info("pretraining: %s", {k: v for k, v in info.items() if k != "overlap"})
    return info


def _load(
    backbone: nn.Module, path: Path, node: dict[str, Any], info: dict[str, Any]
) -> tuple[set[int] | None, list[int]]:
    """Load a backbone; leakage metadata comes from the file (saved by clframe) or the node."""
    if not path.is_file():
        raise ConfigError("pretrain.path", str(path), hint="file not found (a run writes one at " + SAVED_NAME + ")")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        why = " ".join(str(err).split())[:160]
        raise ConfigError(
            "pretrain.path",
            str(path),
            hint=f"unreadable ({type(err).__name__}: {why}); re-run the pretraining or point pretrain.path at an"
            " intact file",
        ) from None
    meta = blob.get("pretrain") if isinstance(blob, dict) and "backbone" in blob else None
    backbone.load_state_dict(blob["backbone"] if meta is not None else blob)
    if meta is not None:
        info["dataset"] = meta["dataset"]
        return {int(h) for h in meta["hashes"].tolist()}, [int(c) for c in meta["classes"]]
    # external weights: we can only check what the node declares they were trained on
    info["verified"] = False
    if not node["dataset"]:
        log.warning("pretrain.path=%s has no clframe metadata and pretrain.dataset is unset: leakage not checked", path)
        return None, []
    data, classes = pretraining_data(node, 0)
    return sample_hashes(data), classes


def check_pretraining(node: Mapping[str, Any]) -> None:
    """The pretraining node's keys, values and file, checked before a run writes anything."""
    from omegaconf import DictConfig, OmegaConf

    if isinstance(node, DictConfig):
        node = OmegaConf.to_container(node, resolve=True)
    node = _node(node)
    if node["path"]:
        if not Path(node["path"]).is_file():
            raise ConfigError("pretrain.path", str(node["path"]), hint=f"file not found (a run writes {SAVED_NAME})")
        return
    check_optimizer("pretrain.optimizer", node["optimizer"])
    lr = node["lr"]
    if not (isinstance(lr, (int, float)) and not isinstance(lr, bool) and math.isfinite(lr) and lr > 0):
        raise ConfigError("pretrain.lr", lr, "a positive finite number")
    if not (isinstance(node["batch_size"], int) and node["batch_size"] > 0):
        raise ConfigError("pretrain.batch_size", node["batch_size"], "a positive integer")


def restore_pretraining(strategy, info: Mapping[str, Any] | None) -> None:
    """Re-apply what the weights alone do not carry (freezing) when a run resumes."""
    if info and info.get("freeze"):
        freeze(strategy.backbone)


__all__ = ["check_leakage", "freeze", "restore_pretraining", "run_pretraining", "sample_hashes", "train_backbone"]
