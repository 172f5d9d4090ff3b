"""Run a stream through a strategy: train, evaluate on every experience, checkpoint, resume.

``run(cfg)`` is a plain function (the CLI is a thin wrapper), so tests and notebooks call
it directly with a config from :func:`clframe.config.compose`.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import io
import json
import logging
import os
import platform
import random
import shutil
import signal
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

import clframe
from clframe import distributed
from clframe.data import data_sources
from clframe.errors import CheckpointError, ConfigError, NonFiniteLossError
from clframe.evaluation import RunContext, check_evaluators, retained_matrix
from clframe.fit import Engine, fit
from clframe.io import LOCK_FILE, atomic_torch_save, atomic_write_text, log_records_to, run_lock, write_json
from clframe.plots import plot_run
from clframe.pretrain import check_pretraining, restore_pretraining, run_pretraining
from clframe.registry import BACKBONES, EVALUATORS, SCENARIOS, STRATEGIES, SUMMARIES, UNLEARNERS, load_plugins
from clframe.stores import WatchedLoader, answer_forget_request
from clframe.strategy import check_capabilities
from clframe.stream import Stream, TensorData

log = logging.getLogger("clframe")
CHECKPOINT = "checkpoints/last.pt"


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build(cfg: DictConfig) -> tuple[Stream, Any]:
    """Build the stream and the strategy (with its backbone) described by ``cfg``; refuse a combination the
    strategy does not support (:func:`~clframe.strategy.check_capabilities`) before anything is written."""
    load_plugins(cfg.get("plugins") or ())
    check_run_keys(cfg)
    Engine.from_config(cfg)  # trainer values and progress bar, refused here
    for name in cfg.get("summaries", ["cl"]):
        SUMMARIES.get(name)  # an unknown summary fails here, with the registered ones
    if cfg.get("pretrain"):
        check_pretraining(cfg.pretrain)
    stream = SCENARIOS.build(cfg.scenario, seed=int(cfg.seed))
    strategy = build_strategy(cfg, stream)
    unlearning = (cfg.get("unlearning") or {}).get("name")
    check_capabilities(strategy, stream, unlearning)
    if unlearning and not any(e.kind == "forget" for e in stream.experiences):
        warnings.warn(f"unlearning={unlearning} has nothing to answer: the stream has no forget request", stacklevel=2)
    return stream, strategy


def build_evaluators(cfg: DictConfig) -> dict[str, Any]:
    """The configured evaluators by name (built before the run directory exists: bad options fail first)."""
    nodes = cfg.get("evaluators") or []
    for i, node in enumerate(nodes):
        if not hasattr(node, "get") or not node.get("name"):
            raise ConfigError(f"evaluators.{i}", node, EVALUATORS.names(), hint="each evaluator is {name: ..., ...}")
    return {node["name"]: EVALUATORS.build(node) for node in nodes}


# top-level keys of experiments/config.yaml and their types (the groups are checked by their registries)
RUN_KEYS = {
    "seed": (int,), "run_dir": (str, type(None)), "resume": (str, type(None)), "overwrite": (bool,),
    "plots": (bool,), "keep_checkpoints": (bool,), "objective": (str, type(None)), "auto_resume": (bool,),
}  # fmt: skip


def check_run_keys(cfg: DictConfig) -> None:
    """Types of the top-level keys, and a ``name`` in every group node."""
    for key, types in RUN_KEYS.items():
        value = cfg.get(key)
        if key in cfg and (not isinstance(value, types) or (isinstance(value, bool) and bool not in types)):
            names = {int: "an integer", str: "a path", bool: "true or false", type(None): "null"}
            raise ConfigError(key, value, " or ".join(names[t] for t in types))
    for key in ("evaluators", "plugins", "summaries"):
        if cfg.get(key) is not None and not OmegaConf.is_list(cfg[key]) and not isinstance(cfg[key], list):
            raise ConfigError(key, cfg[key], "a list, e.g. [a, b]")
    for group in ("scenario", "strategy", "backbone"):
        node = cfg.get(group)
        if node is None or not OmegaConf.is_dict(node) or not node.get("name"):
            raise ConfigError(group, node, hint=f"a {group} node with a name (clframe list)")


def build_strategy(cfg: DictConfig, stream: Stream, *, unlearner: bool = True):
    """A freshly initialised strategy for ``stream`` (seeded by ``cfg.seed``: same config, same init), with
    the configured unlearner unless ``unlearner=False``."""
    seed_all(int(cfg.seed))
    text = stream.extras.get("tokenizer") is not None
    if text != bool(getattr(BACKBONES.get(cfg.backbone.name), "language_model", False)):
        fits = [n for n in BACKBONES.names() if bool(getattr(BACKBONES.get(n), "language_model", False)) == text]
        kind = "a text stream: it needs a language-model backbone" if text else "not a text stream"
        raise ConfigError("backbone", cfg.backbone.name, fits, hint=f"scenario {stream.name} is {kind}")
    extra = {"tokenizer": stream.extras["tokenizer"]} if text else {}
    backbone = BACKBONES.build(cfg.backbone, input_shape=stream.input_shape, **extra)
    strategy = STRATEGIES.build(cfg.strategy, backbone=backbone, n_classes=stream.n_classes, setting=stream.setting)
    if unlearner and cfg.get("unlearning"):
        strategy.unlearner = UNLEARNERS.build(cfg.unlearning)
    return strategy


# the config nodes the training objects are built from (with the engine's options: a run's training identity)
TRAINING_NODES = ("scenario", "strategy", "backbone", "pretrain", "seed", "plugins")


def run_context(cfg: DictConfig, stream: Stream, run_dir: Path | str = ".", engine: Engine | None = None):
    """The :class:`~clframe.evaluation.RunContext` evaluators get instead of the config: the run's engine, a
    factory of freshly initialised (and pretrained) strategies and the learn step, bound here."""
    engine = engine or Engine.from_config(cfg)
    nodes = {k: OmegaConf.to_container(cfg[k], resolve=True) if OmegaConf.is_config(cfg.get(k)) else cfg.get(k)
             for k in TRAINING_NODES}  # fmt: skip
    identity = json.dumps({**nodes, "engine": engine.identity()}, sort_keys=True, default=str)

    def new_strategy(workdir: Path | None = None):
        strategy = build_strategy(cfg, stream, unlearner=False)
        strategy.engine = engine
        if workdir is not None and cfg.get("pretrain"):
            run_pretraining(strategy, cfg.pretrain, stream, seed=int(cfg.seed), run_dir=workdir)
        return strategy

    def learn(strategy, exp, wrap_loader=None) -> int:
        return learn_experience(engine, strategy, exp, wrap_loader=wrap_loader)

    return RunContext(
        run_dir=Path(run_dir),
        seed=int(cfg.seed),
        engine=engine,
        training_key=hashlib.sha256(identity.encode()).hexdigest(),
        new_strategy=new_strategy,
        learn=learn,
        plots=bool(cfg.get("plots", True)),
        unlearning=(cfg.get("unlearning") or {}).get("name"),
    )


def start_event(strategy, seed: int, exp) -> None:
    """Seed everything for one stream event (the same per-event seed wherever the event is replayed)."""
    seed_all(seed * 1000 + exp.id)
    strategy.seed = seed * 1000 + exp.id


def learn_experience(
    engine: Engine, strategy, exp, logger=None, wrap_loader=None, step_offset: int = 0, forgotten=None
) -> int:
    """Train on one learn experience: ``before_experience``, :func:`clframe.fit.fit`, ``after_experience``.

    ``wrap_loader`` (optional) wraps the strategy's loader, e.g. to record the sample ids seen;
    ``forgotten`` (ids forgotten so far) makes any batch that carries one of them stop the run.
    An experience whose training data were all forgotten only updates the class bookkeeping.
    Returns the number of optimiser steps taken."""
    strategy.train()
    strategy.before_experience(exp)
    if exp.train is None or not len(exp.train):
        log.warning("experience %s has no training data left; skipped", exp.name)
        return 0
    steps = 0
    loader = strategy.train_dataloader_for(exp)
    if loader is not None:  # None: the strategy takes no gradient steps (e.g. NMC)
        if forgotten is not None and len(forgotten):
            loader = WatchedLoader(loader, forbidden=forgotten)
        if wrap_loader is not None:
            loader = wrap_loader(loader)
        steps = fit(strategy, loader, engine, logger, step_offset)
    else:  # gradient-free updates (class means...) run where evaluation runs
        strategy.to(engine.device)
    strategy.after_experience(exp)
    return steps


def eval_device(cfg: DictConfig) -> torch.device:
    """Where the run evaluates (:attr:`clframe.fit.Engine.device` of ``cfg``)."""
    return Engine.from_config(cfg).device


@torch.no_grad()
def correct(strategy, data: TensorData, device: torch.device, batch_size: int = 2048) -> torch.Tensor:
    """Per-sample bool of :meth:`Strategy.correct <clframe.strategy.Strategy.correct>` on ``data`` (eval mode)."""
    strategy.eval().to(device)
    batch_size = 256 if strategy.language_model else batch_size  # (batch, length, vocab) logits
    parts = [
        strategy.correct(*(t[i : i + batch_size].to(device) for t in (data.x, data.y, data.task))).cpu()
        for i in range(0, len(data), batch_size)
    ]
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.bool)


@torch.no_grad()
def predict(strategy, data: TensorData, device: torch.device, batch_size: int = 2048) -> torch.Tensor:
    """Masked logits of ``strategy`` on ``data`` (eval mode, batched, on ``device``)."""
    strategy.eval().to(device)
    out = [
        strategy(data.x[i : i + batch_size].to(device), data.task[i : i + batch_size].to(device)).float().cpu()
        for i in range(0, len(data), batch_size)
    ]
    return torch.cat(out) if out else torch.empty(0, strategy.n_classes)


def accuracy(strategy, data: TensorData, device: torch.device) -> float:
    return float(correct(strategy, data, device).float().mean())


def class_counts(strategy, data: TensorData, device: torch.device) -> list[list[int]]:
    """``[correct per class, samples per class]`` of ``strategy`` on ``data`` (for class-restricted accuracies)."""
    right = correct(strategy, data, device)
    n = strategy.n_classes
    return [torch.bincount(data.y[right], minlength=n).tolist(), torch.bincount(data.y, minlength=n).tolist()]


# the logger classes a resumed run may instantiate from a saved config.yaml (a run directory is untrusted input)
SAFE_LOGGERS = (
    "lightning.pytorch.loggers.CSVLogger",
    "lightning.pytorch.loggers.TensorBoardLogger",
    "lightning.pytorch.loggers.WandbLogger",
    "lightning.pytorch.loggers.MLFlowLogger",
)


def check_saved_logger(node: Any) -> None:
    """Refuse a saved ``logger`` node that could run code: its ``_target_`` must be in :data:`SAFE_LOGGERS`
    and every other value plain (numbers, strings, booleans, null, or lists of them; no nested nodes)."""
    if node is None:
        return
    target = node.get("_target_") if isinstance(node, dict) else None
    plain = (str, int, float, bool, type(None))
    values_ok = isinstance(node, dict) and all(
        isinstance(v, plain) or (isinstance(v, list) and all(isinstance(x, plain) for x in v))
        for k, v in node.items()
        if k != "_target_"
    )
    if target not in SAFE_LOGGERS or not values_ok or any(str(k).startswith("_") for k in node if k != "_target_"):
        raise ConfigError(
            "logger",
            target if target not in SAFE_LOGGERS else node,
            SAFE_LOGGERS,
            hint="a resumed run instantiates only these logger classes, with plain values, from the saved"
            " config.yaml (a run directory is untrusted input)",
        )


def make_logger(cfg: DictConfig, run_dir: Path, group: str | None = None):
    """The configured Lightning logger, instantiated non-recursively (a value is never a nested ``_target_``).
    A wandb run is named after ``run_dir`` and put in ``group`` unless the node says otherwise."""
    if cfg.get("logger") is None:
        return None
    from hydra.utils import instantiate

    node = OmegaConf.to_container(cfg.logger, resolve=True)
    if not isinstance(node, dict) or "_target_" not in node:
        raise ConfigError("logger", node, "a node with _target_ (a Lightning logger class), or logger=none")
    if "WandbLogger" in node.get("_target_", ""):
        os.environ.setdefault("WANDB_MODE", "offline" if node.get("offline", True) else "online")
        node.setdefault("name", Path(run_dir).name)
        if group:
            node.setdefault("group", group)
    try:
        return instantiate(node, save_dir=str(run_dir), _recursive_=False)
    except Exception as err:
        cause = err.__cause__ or err
        raise ConfigError("logger", node["_target_"], hint=f"{type(cause).__name__}: {cause}") from None


# what a resumed run takes from the caller's config instead of the saved one (nothing that changes results)
SAFE_RESUME_KEYS = ("progress_bar", "plots", "keep_checkpoints")
# what clframe writes into a run directory (``overwrite=true`` removes these and nothing else)
RUN_OUTPUTS = (
    "config.yaml", "metrics.json", "events.jsonl", "accuracy_matrix.csv", "run.log", "checkpoints", "plots", "logs",
    "wandb", "oracle_cache", "tokenizer",
)  # fmt: skip


def save_tokenizer(stream: Stream, run_dir: Path) -> None:
    """A text stream's tokenizer in ``<run_dir>/tokenizer`` (written whole or not at all): the run's own
    vocabulary, to read its generations or load its weights elsewhere."""
    tokenizer = stream.extras.get("tokenizer")
    if tokenizer is None or not hasattr(tokenizer, "save_pretrained"):
        return
    tmp, target = run_dir / ".tokenizer.tmp", run_dir / "tokenizer"
    shutil.rmtree(tmp, ignore_errors=True)
    tokenizer.save_pretrained(str(tmp))
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)


def check_resume_overrides(overrides: list[str]) -> None:
    """Refuse command-line overrides that ``resume=`` would ignore (the saved config is authoritative);
    :data:`SAFE_RESUME_KEYS` are honoured, and ``plugins=`` (the modules the caller trusts to import: a resumed
    run's own plugins are never imported from its directory, see :func:`resumed_config`)."""
    keys = [o.split("=", 1)[0].lstrip("+~") for o in overrides]
    allowed = (*SAFE_RESUME_KEYS, "plugins")
    ignored = [o for o, k in zip(overrides, keys) if k not in ("resume", *allowed) and "=" in o]
    if ignored:
        raise ConfigError(
            "resume",
            ignored[0],
            hint="a resumed run continues with its saved config.yaml; overrides allowed with resume=: "
            + ", ".join(allowed)
            + f" (refused: {' '.join(ignored)}); start a new run to change anything else",
        )


def resumed_config(cfg: DictConfig) -> DictConfig:
    """The saved config of the run at ``cfg.resume``, checked (it is untrusted input), with the caller's
    :data:`SAFE_RESUME_KEYS`."""
    run_dir = Path(cfg.resume)
    saved = run_dir / "config.yaml"
    if not saved.is_file():
        raise ConfigError("resume", str(run_dir), hint="no config.yaml there; pass the directory of an earlier run")
    try:
        loaded = OmegaConf.load(saved)
    except Exception as err:
        why = " ".join(str(err).split())
        raise ConfigError("resume", str(run_dir), hint=f"{saved} is not a readable config ({why})") from None
    check_saved_logger(OmegaConf.to_container(loaded.logger, resolve=False) if loaded.get("logger") else None)
    for key in SAFE_RESUME_KEYS:
        if key in cfg:
            loaded[key] = cfg[key]
    loaded.resume = str(run_dir)
    loaded.run_dir = str(run_dir)  # resume= is authoritative: a moved or copied run continues where it is now
    missing = [str(p) for p in loaded.get("plugins") or () if str(p) not in sys.modules]
    if missing:
        raise ConfigError(
            "plugins",
            missing,
            hint="the run used these plugins; resuming never imports code named in a run"
            f" directory: pass plugins=[{','.join(missing)}] with resume= if you trust them",
        )
    return loaded


def auto_resumed(cfg: DictConfig) -> DictConfig:
    """``auto_resume=true``: a job started again into its own run directory (a SLURM job requeued after
    preemption or its time limit) continues from the last checkpoint, as ``resume=<run_dir>`` would. The
    directory must hold a run of the same config (seed included); anything else is refused."""
    run_dir = Path(cfg.run_dir) if cfg.get("run_dir") else None
    if not cfg.get("auto_resume") or cfg.get("resume") or run_dir is None:
        return cfg
    if not (run_dir / "checkpoints" / "last.pt").is_file() or not (run_dir / "config.yaml").is_file():
        return cfg  # nothing to continue: a fresh run
    ignore = {"run_dir", "resume", "overwrite", "auto_resume", *SAFE_RESUME_KEYS}
    mine = {k: v for k, v in OmegaConf.to_container(cfg, resolve=True).items() if k not in ignore}
    saved = OmegaConf.to_container(OmegaConf.load(run_dir / "config.yaml"), resolve=True)
    if {k: v for k, v in saved.items() if k not in ignore} != mine:
        raise ConfigError(
            "auto_resume",
            True,
            hint=f"{run_dir} holds a run of another config; choose another run_dir or overwrite=true",
        )
    log.info("auto_resume: continuing the run in %s", run_dir)
    resumed = cfg.copy()
    resumed.resume = str(run_dir)
    return resumed


def prepare_run_dir(run_dir: Path, *, resume: bool, overwrite: bool, dry: bool = False) -> None:
    """Refuse a fresh run into a directory that holds files (``overwrite=true`` removes clframe's outputs first,
    unless ``dry``; ``resume=`` continues the run there). Called with the directory's lock held."""
    if resume:
        return
    present = sorted(p.name for p in run_dir.iterdir() if p.name != LOCK_FILE)
    if present and not overwrite:
        raise ConfigError(
            "run_dir",
            str(run_dir),
            hint=f"not empty ({', '.join(present[:4])}{', ...' if len(present) > 4 else ''}): pass resume={run_dir}"
            " to continue that run, overwrite=true to replace its results, or another run_dir",
        )
    for name in [] if dry else present:
        if name in RUN_OUTPUTS:
            path = run_dir / name
            shutil.rmtree(path) if path.is_dir() else path.unlink()


def resolve_run_dir(cfg: DictConfig, stream: Stream) -> Path:
    if cfg.get("run_dir"):
        return Path(cfg.run_dir)
    stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
    return Path("runs") / f"{stamp}_{stream.name}_{cfg.strategy.name}_s{cfg.seed}"


def run(cfg: DictConfig) -> dict[str, Any]:
    """Run the experiment described by ``cfg``; return the content of ``metrics.json``.

    With ``cfg.resume`` set to an earlier run directory, its saved config is used (plus the caller's
    :data:`SAFE_RESUME_KEYS`) and the run continues after the last checkpointed experience. Everything is
    validated before the run directory is created or touched.
    """
    load_plugins(cfg.get("plugins") or ())  # the caller's choice (a saved run directory never imports code)
    if not distributed.is_worker():  # a worker's config is rank 0's, final
        cfg = auto_resumed(cfg)
        if cfg.get("resume"):
            cfg = resumed_config(cfg)
    stream, strategy = build(cfg)
    engine = Engine.from_config(cfg)
    strategy.engine = engine  # auxiliary loops (pretraining, unlearning) train where the stream trains
    evaluators = build_evaluators(cfg)
    check_evaluators(evaluators, strategy)
    run_dir = resolve_run_dir(cfg, stream)
    cfg.run_dir = str(run_dir)
    created = not run_dir.exists()
    if not created and not distributed.is_worker():  # checked again under the lock; here so that a refused run
        prepare_run_dir(run_dir, resume=bool(cfg.get("resume")), overwrite=bool(cfg.get("overwrite")), dry=True)
    with distributed.processes(engine.processes, OmegaConf.to_yaml(cfg)):  # trainer.devices > 1: the workers
        engine.join()
        run_dir = Path(distributed.broadcast(str(run_dir)))  # an external launcher's ranks: rank 0's directory
        cfg.run_dir = str(run_dir)
        context = run_context(cfg, stream, run_dir, engine)
        if not distributed.is_main():  # rank > 0: trains with rank 0, never writes (clframe.distributed)
            distributed.barrier()  # rank 0 has prepared the run directory
            return _run_locked(cfg, stream, strategy, evaluators, None, context)
        logger = make_logger(cfg, run_dir, f"{stream.name}_{cfg.strategy.name}")  # writes nothing until first used
        run_dir.mkdir(parents=True, exist_ok=True)
        try:
            with run_lock(run_dir):  # one run per directory at a time
                prepare_run_dir(run_dir, resume=bool(cfg.get("resume")), overwrite=bool(cfg.get("overwrite")))
                distributed.barrier()
                run_log = logging.FileHandler(run_dir / "run.log", delay=True)  # the run's log, inside its folder
                with log_records_to(run_log, "%(asctime)s %(levelname)s %(message)s"), _sigterm_interrupts():
                    return _run_locked(cfg, stream, strategy, evaluators, logger, context)
        except ConfigError:
            if created and not any(p.name != LOCK_FILE for p in run_dir.iterdir()):
                shutil.rmtree(run_dir, ignore_errors=True)  # refused before anything was written: leave no trace
            raise


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler's preemption or time limit, ``kill``) during a run: handled like Ctrl-C — the
    run's status becomes ``interrupted``, finished events are kept, ``resume=`` continues it."""


@contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """Turn SIGTERM into :class:`Terminated` for the duration of the run (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise Terminated("SIGTERM")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run_locked(cfg: DictConfig, stream: Stream, strategy, evaluators: dict[str, Any], logger, context) -> dict:
    """The event loop of :func:`run`, holding the run directory's lock."""
    run_dir, engine = context.run_dir, context.engine
    for stray in run_dir.rglob(".*.tmp") if distributed.is_main() else ():  # half-written files of a killed run
        stray.unlink(missing_ok=True)
    learn_ids = [e.id for e in stream.experiences if e.kind == "learn"]
    tests = [stream.experiences[i].test for i in learn_ids]
    device = engine.device
    seed = int(cfg.seed)
    state: dict[str, Any] = {
        "next": 0,
        "rows": [],
        "row_events": [],
        "random_init": None,
        "timing": [],
        "evaluations": [],
        "pretrain": None,
        "steps": 0,
        "counts": [],  # per event, per test column: [correct per class, samples per class]
        "random_init_counts": None,
        "forget_requests": [],
        "log_rows": 0,  # data rows of the CSV log written by the checkpointed events
        "rank_checks": [],  # several processes: per event, the digests found identical on every rank
    }
    ckpt_path = run_dir / CHECKPOINT
    ckpt = load_checkpoint(ckpt_path) if cfg.get("resume") and ckpt_path.is_file() else None
    for ev in evaluators.values():
        ev.setup(context)
    if ckpt is not None:
        strategy.restore_checkpoint_state(ckpt["extra"])
        strategy.load_state_dict(ckpt["model"])
        strategy.optimizer_state = ckpt.get("optimizer")
        state = {**state, **ckpt["runner"]}
        if state.get("pretrain"):  # re-apply what weights do not carry (a frozen backbone)
            restore_pretraining(strategy, state["pretrain"])
        for name, ev in evaluators.items():
            ev.load_state(ckpt.get("evaluators", {}).get(name, {}))
        _write_events(run_dir, state)  # the log of exactly the checkpointed events (a kill may have cut it)
        restore_csv_log(logger, state.get("log_rows"))
        log.info("resuming %s at experience %d", run_dir, state["next"])
    else:
        log.info("starting %s (%s / %s / seed %d)", run_dir, stream.name, cfg.strategy.name, seed)
        atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg))
        if distributed.is_main():
            save_tokenizer(stream, run_dir)
        if logger is not None:  # the resolved config as the run's hyperparameters (CSV: logs/hparams.yaml)
            logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
        _write_events(run_dir, state)
        if cfg.get("pretrain"):
            state["pretrain"] = run_pretraining(strategy, cfg.pretrain, stream, seed=seed, run_dir=run_dir)
        if stream.setting == "domain":  # only FWT uses it, and FWT is defined in domain-IL only (metrics/cl.py)
            with distributed.main_only() as main:
                init = [class_counts(strategy, d, device) for d in tests] if main else None
            state["random_init_counts"] = distributed.broadcast(init)
            state["random_init"] = [_acc(c) for c in state["random_init_counts"]]

    result: dict[str, Any] = {}
    status, error = "running", None
    try:
        for exp in stream.experiences[state["next"] :]:
            t0 = time.perf_counter()
            start_event(strategy, seed, exp)
            forgotten = stream.forgotten_until(exp.id)
            if exp.kind == "learn":
                state["steps"] = state.get("steps", 0) + learn_experience(
                    engine, strategy, exp, logger, step_offset=state.get("steps", 0), forgotten=forgotten
                )
            else:
                report = answer_forget_request(strategy, exp, forgotten)
                state["forget_requests"].append(
                    {"id": exp.id, "name": exp.name, "removed_classes": exp.removed_classes, **report}
                )
            if distributed.world_size() > 1:  # every rank holds the same weights and sample stores, or the run stops
                state["rank_checks"].append(distributed.check_identical(rank_state(strategy), exp.name))
            with distributed.main_only() as main:  # evaluated once, on rank 0
                measured = None
                if main:
                    counts = [class_counts(strategy, d, device) for d in tests]
                    measured = (
                        counts,
                        {name: ev.after_event(strategy, stream, exp, device) for name, ev in evaluators.items()},
                    )
            counts, evaluations = distributed.broadcast(measured)
            row = [_acc(c) for c in counts]
            state["counts"].append(counts)
            state["rows"].append(row)
            state["evaluations"].append(evaluations)
            state["row_events"].append({"id": exp.id, "kind": exp.kind, "name": exp.name})
            state["timing"].append(time.perf_counter() - t0)
            state["next"] = exp.id + 1
            if logger is not None:  # logged before the checkpoint, which records how many CSV rows are final
                # at the optimiser-step position (monotonic with train/loss), with the event index as its own axis
                accs = {f"exp_{j}/test/acc": a for j, a in zip(learn_ids, row)}
                logger.log_metrics({**accs, "event": exp.id}, step=state["steps"])
                logger.save()
                state["log_rows"] = csv_log_rows(logger)
            strategy.cpu()
            checkpoint = {
                "model": strategy.state_dict(),
                "extra": strategy.checkpoint_state(),
                "runner": state,
                "evaluators": {name: ev.state() for name, ev in evaluators.items()},
                "optimizer": strategy.optimizer_state,  # None unless strategy.reset_optimizer=false
            }
            atomic_torch_save(checkpoint, ckpt_path)  # checkpoint first: a kill after this point loses nothing
            if cfg.get("keep_checkpoints"):
                atomic_torch_save(checkpoint, run_dir / f"checkpoints/{exp.name}.pt")
            result = _write_results(run_dir, cfg, stream, state, status, error)
            _write_events(run_dir, state)
        status = "complete"
    except NonFiniteLossError as err:
        status, error = "failed", str(err)
        raise
    except KeyboardInterrupt as err:
        status, error = "interrupted", "SIGTERM" if isinstance(err, Terminated) else "KeyboardInterrupt"
        raise
    except BaseException as err:
        status, error = "failed", f"{type(err).__name__}: {err}"
        raise
    finally:
        result = _write_results(run_dir, cfg, stream, state, status, error)
        if status != "complete":
            _finish_logger(logger, status, {}, state["steps"])
    if status == "complete" and evaluators and distributed.is_main():
        for ev in evaluators.values():
            result["metrics"].update(ev.finalize(run_dir, result))
        write_json(run_dir / "metrics.json", result)
    if status == "complete":
        _finish_logger(logger, "success", result["metrics"], state["steps"])
    if status == "complete" and cfg.get("plots", True) and distributed.is_main():
        plot_run(run_dir)
    return result


def rank_state(strategy) -> dict[str, Any]:
    """What must be identical on every rank after an event: the weights and each declared sample store."""
    stores = strategy.checkpoint_state()
    return {"weights": strategy.state_dict(), **{f"store {k}": v for k, v in stores.pop("stores").items()},
            "strategy state": stores}  # fmt: skip


def _acc(counts: list[list[int]]) -> float:
    correct, total = counts
    return sum(correct) / max(1, sum(total))


def stage_rows(state: dict[str, Any], stream: Stream) -> tuple[list[int], list[list[int]]]:
    """Which evaluation rows make the accuracy matrix, and the classes removed at each.

    Row ``i`` of the matrix is the evaluation after learn experience ``i`` *and* the forget requests that
    follow it (before the next learn experience): the model at the end of that stage. ``removed[i]`` are
    the classes deliberately forgotten by then (``Experience.removed_classes``)."""
    events = {e.id: e for e in stream.experiences}
    picks: list[int] = []
    removed: list[list[int]] = []
    gone: list[int] = []
    for k, ev in enumerate(state["row_events"]):
        if ev["kind"] == "learn":
            picks.append(k)
            removed.append(list(gone))
        elif picks:  # a forget request: the stage's row moves to after it
            gone = list(events[ev["id"]].removed_classes)
            picks[-1], removed[-1] = k, list(gone)
    return picks, removed


def _none_for_nan(obj: Any) -> Any:
    if isinstance(obj, float) and obj != obj:
        return None
    if isinstance(obj, list):
        return [_none_for_nan(v) for v in obj]
    if isinstance(obj, dict):
        return {k: _none_for_nan(v) for k, v in obj.items()}
    return obj


def _write_results(run_dir: Path, cfg, stream: Stream, state, status: str, error) -> dict[str, Any]:
    picks, removed = stage_rows(state, stream)
    shape = (len(picks), len(stream.learn_experiences), 2, stream.n_classes)  # rows, columns, [correct, total]
    counts = np.asarray([state["counts"][k] for k in picks], dtype=float).reshape(shape)
    correct, total = counts[:, :, 0], counts[:, :, 1]  # (rows, columns, classes)
    R, R_all = retained_matrix(correct, total, removed[-1] if removed else ()), retained_matrix(correct, total)
    random_init = None
    if state["random_init_counts"] is not None:
        init = np.asarray(state["random_init_counts"], dtype=float)[None]
        random_init = retained_matrix(init[:, :, 0], init[:, :, 1], removed[-1] if removed else ())[0]
    reported: dict[str, dict] = {"metrics": {}, "curves": {}, "undefined_metrics": {}}
    for name in cfg.get("summaries", ["cl"]):
        for key, values in SUMMARIES.get(name)(correct, total, removed, random_init, stream.setting).items():
            reported.setdefault(key, {}).update(values)
    result = {
        "status": status,
        "error": error,
        "scenario": stream.name,
        "strategy": cfg.strategy.name,
        "seed": int(cfg.seed),
        "setting": stream.setting,
        "experiences": [
            {"id": e.id, "kind": e.kind, "name": e.name, "classes": list(e.classes), "task_id": e.task_id}
            for e in stream.experiences
        ],
        "accuracy_matrix": R.tolist(),
        "accuracy_matrix_all_classes": R_all.tolist(),
        "removed_classes": removed[-1] if removed else [],
        "rows": state["rows"],
        "row_events": state["row_events"],
        "random_init_acc": state["random_init"],
        "evaluations": state["evaluations"],
        "pretrain": state["pretrain"],
        "metrics": reported["metrics"],
        "undefined_metrics": reported["undefined_metrics"],
        "forget_requests": state.get("forget_requests", []),
        "curves": reported["curves"],
        "seconds_per_experience": state["timing"],
        "optimizer_steps": state.get("steps", 0),
        "run_dir": str(run_dir),
        "environment": environment(),
        "data_sources": data_sources(),  # which files the data loaders of this process read (pickles / JPEG mirror)
    }
    if state.get("rank_checks"):  # several processes: the per-event digests every rank agreed on
        result["distributed"] = {"processes": distributed.world_size(), "rank_checks": state["rank_checks"]}
    result = _none_for_nan(result)
    write_json(run_dir / "metrics.json", result)
    if len(R):
        header = ",".join(f"exp_{j}" for j in range(R.shape[1]))
        lines = [header] + [",".join(f"{v:.6f}" for v in row) for row in R]
        atomic_write_text(run_dir / "accuracy_matrix.csv", "\n".join(lines) + "\n")
    return result


def _finish_logger(logger, status: str, headline: dict[str, Any], step: int) -> None:
    """Log the headline metrics (``cl/*``, ``unlearn/*``, ...) once at the end (wandb: also the run summary),
    then close the logger."""
    if logger is None:
        return
    values = {k: v for k, v in headline.items() if isinstance(v, (int, float)) and v == v}
    if values:
        logger.log_metrics(values, step=step)
        if type(logger).__name__ == "WandbLogger":
            logger.experiment.summary.update(values)
    if hasattr(logger, "finalize"):
        logger.finalize(status)


@functools.cache
def environment() -> dict[str, str]:
    """Versions and device of this process (reports and metrics.json say what produced a number); the same for
    the whole process, so computed once."""
    try:
        cuda = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except Exception:  # noqa: BLE001  (a driver that cannot name its device: report the CPU)
        cuda = None
    return {
        "clframe": clframe.__version__, "python": platform.python_version(), "torch": torch.__version__,
        "lightning": lightning.__version__, "platform": platform.platform(), "device": cuda or "cpu",
        "cpus": str(os.cpu_count()),
    }  # fmt: skip


def _write_events(run_dir: Path, state: dict[str, Any]) -> None:
    """``events.jsonl``: one line per finished event, rewritten from the runner state (atomic, so the file
    always matches the last checkpoint or the one being written)."""
    lines = [
        json.dumps({"id": ev["id"], "kind": ev["kind"], "name": ev["name"], "acc": row, "seconds": sec})
        for ev, row, sec in zip(state["row_events"], state["rows"], state["timing"])
    ]
    atomic_write_text(run_dir / "events.jsonl", "".join(line + "\n" for line in lines))


def load_checkpoint(path: Path) -> dict[str, Any]:
    """``checkpoints/last.pt`` (tensors and plain containers only); a damaged file names itself and the fix."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(
            f"{path} cannot be read ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); "
            f"if the keep_checkpoints copies exist, copy the newest over it, or delete it to restart this run"
        ) from None
    if not isinstance(ckpt, dict) or not {"model", "extra", "runner"} <= set(ckpt):
        raise CheckpointError(f"{path} is not a clframe checkpoint (keys model, extra, runner); delete it to restart")
    return ckpt


def _csv_path(logger) -> Path | None:
    """The metrics file of a Lightning ``CSVLogger`` (found without touching ``logger.experiment``)."""
    if type(logger).__name__ != "CSVLogger" or not hasattr(logger, "log_dir"):
        return None
    return Path(logger.log_dir) / "metrics.csv"


def csv_log_rows(logger) -> int:
    """Data rows in the CSV log now (0 for other loggers)."""
    path = _csv_path(logger)
    if path is None or not path.is_file():
        return 0
    with open(path, newline="") as fh:
        return max(0, sum(1 for _ in csv.reader(fh)) - 1)


def restore_csv_log(logger, rows: int | None) -> None:
    """On resume, keep the first ``rows`` rows of the CSV log (those of the checkpointed events; ``None``: all)
    — Lightning's CSV writer deletes an existing file when it starts, and warns that earlier logs "will be
    deleted": untrue here (the rows are written back), so that warning is silenced."""
    path = _csv_path(logger)
    if path is None:
        return
    header, kept = [], []
    if path.is_file():
        with open(path, newline="") as fh:
            reader = csv.DictReader(fh)
            header, kept = list(reader.fieldnames or []), list(reader)
    kept = kept if rows is None else kept[:rows]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Experiment logs directory .* exists and is not empty")
        writer = logger.experiment  # the writer removes the old file here
    if header:
        buf = io.StringIO()
        out = csv.DictWriter(buf, fieldnames=header)
        out.writeheader()
        out.writerows(kept)
        atomic_write_text(path, buf.getvalue())
        writer.metrics_keys = list(header)
