"""Run a stream through a strategy: train, evaluate on every experience, checkpoint, resume.

``run(cfg)`` is a plain function (the CLI is a thin wrapper), so tests and notebooks call
it directly with a config from :func:`clframe.config.compose`.
"""

from __future__ import annotations

import json
import logging
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from clframe.errors import ConfigError, NonFiniteLossError
from clframe.fit import fit
from clframe.io import atomic_torch_save, atomic_write_text, run_lock, write_json
from clframe.plots import plot_run
from clframe.pretrain import restore_pretraining, run_pretraining
from clframe.registry import BACKBONES, EVALUATORS, SCENARIOS, STRATEGIES, UNLEARNERS, load_plugins
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
    stream = SCENARIOS.build(cfg.scenario, seed=int(cfg.seed))
    strategy = build_strategy(cfg, stream)
    check_capabilities(strategy, stream, (cfg.get("unlearning") or {}).get("name"))
    return stream, strategy


def build_strategy(cfg: DictConfig, stream: Stream):
    """A freshly initialised strategy for ``stream`` (seeded by ``cfg.seed``: same config, same init)."""
    seed_all(int(cfg.seed))
    backbone = BACKBONES.build(cfg.backbone, input_shape=stream.input_shape)
    strategy = STRATEGIES.build(cfg.strategy, backbone=backbone, n_classes=stream.n_classes, setting=stream.setting)
    if cfg.get("unlearning"):
        strategy.unlearner = UNLEARNERS.build(cfg.unlearning)
    return strategy


def start_event(strategy, seed: int, exp) -> None:
    """Seed everything for one stream event (the same per-event seed wherever the event is replayed)."""
    seed_all(seed * 1000 + exp.id)
    strategy.seed = seed * 1000 + exp.id


def learn_experience(
    cfg: DictConfig, strategy, exp, logger=None, wrap_loader=None, step_offset: int = 0, forgotten=None
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
        steps = fit(strategy, loader, cfg, logger, step_offset)
    else:  # gradient-free updates (class means...) run where evaluation runs
        strategy.to(eval_device(cfg))
    strategy.after_experience(exp)
    return steps


def eval_device(cfg: DictConfig) -> torch.device:
    accel = str(cfg.trainer.get("accelerator", "auto"))
    if torch.cuda.is_available() and accel in ("auto", "gpu", "cuda"):
        return torch.device("cuda")
    return torch.device("cpu")


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
    return float((predict(strategy, data, device).argmax(1) == data.y).float().mean())


def class_counts(strategy, data: TensorData, device: torch.device) -> list[list[int]]:
    """``[correct per class, samples per class]`` of ``strategy`` on ``data`` (for class-restricted accuracies)."""
    right = predict(strategy, data, device).argmax(1) == data.y
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


def make_logger(cfg: DictConfig, run_dir: Path):
    """The configured Lightning logger, instantiated non-recursively (a value is never a nested ``_target_``)."""
    if cfg.get("logger") is None:
        return None
    from hydra.utils import instantiate

    node = OmegaConf.to_container(cfg.logger, resolve=True)
    if "WandbLogger" in node.get("_target_", ""):
        os.environ.setdefault("WANDB_MODE", "offline" if node.get("offline", True) else "online")
    return instantiate(node, save_dir=str(run_dir), _recursive_=False)


def resolve_run_dir(cfg: DictConfig, stream: Stream) -> Path:
    if cfg.get("run_dir"):
        return Path(cfg.run_dir)
    stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
    return Path("runs") / f"{stamp}_{stream.name}_{cfg.strategy.name}_s{cfg.seed}"


def run(cfg: DictConfig) -> dict[str, Any]:
    """Run the experiment described by ``cfg``; return the content of ``metrics.json``.

    With ``cfg.resume`` set to an earlier run directory, its saved config is used and the
    run continues after the last checkpointed experience.
    """
    load_plugins(cfg.get("plugins") or ())  # the caller's choice (a saved run directory never imports code)
    if cfg.get("resume"):
        run_dir = Path(cfg.resume)
        saved = run_dir / "config.yaml"
        if not saved.is_file():
            raise ConfigError("resume", str(run_dir), hint="no config.yaml there; pass the directory of an earlier run")
        cfg = OmegaConf.load(saved)
        check_saved_logger(OmegaConf.to_container(cfg.logger, resolve=False) if cfg.get("logger") else None)
        cfg.resume = str(run_dir)
        cfg.run_dir = str(run_dir)  # resume= is authoritative: a moved or copied run continues where it is now
        missing = [str(p) for p in cfg.get("plugins") or () if str(p) not in sys.modules]
        if missing:
            raise ConfigError(
                "plugins",
                missing,
                hint="the run used these plugins; resuming never imports code named in a run"
                f" directory: pass plugins=[{','.join(missing)}] with resume= if you trust them",
            )
    stream, strategy = build(cfg)
    run_dir = resolve_run_dir(cfg, stream)
    cfg.run_dir = str(run_dir)
    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    with run_lock(run_dir):  # one run per directory at a time
        return _run_locked(cfg, stream, strategy, run_dir)


def _run_locked(cfg: DictConfig, stream: Stream, strategy, run_dir: Path) -> dict[str, Any]:
    """The event loop of :func:`run`, holding the run directory's lock."""
    for stray in run_dir.rglob(".*.tmp"):  # half-written files of a killed run (clframe.io's atomic writes)
        stray.unlink(missing_ok=True)
    learn_ids = [e.id for e in stream.experiences if e.kind == "learn"]
    tests = [stream.experiences[i].test for i in learn_ids]
    device = eval_device(cfg)
    seed = int(cfg.seed)

    evaluators = {node["name"]: EVALUATORS.build(node) for node in cfg.get("evaluators") or []}
    for ev in evaluators.values():
        ev.setup(cfg, run_dir)
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
    }
    ckpt_path = run_dir / CHECKPOINT
    if cfg.get("resume") and ckpt_path.is_file():
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        strategy.restore_checkpoint_state(ckpt["extra"])
        strategy.load_state_dict(ckpt["model"])
        strategy.optimizer_state = ckpt.get("optimizer")
        state = ckpt["runner"]
        if state.get("pretrain"):  # re-apply what weights do not carry (a frozen backbone)
            restore_pretraining(strategy, state["pretrain"])
        for name, ev in evaluators.items():
            ev.load_state(ckpt.get("evaluators", {}).get(name, {}))
        log.info("resuming %s at experience %d", run_dir, state["next"])
    else:
        atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg))
        (run_dir / "events.jsonl").unlink(missing_ok=True)  # a fresh run into an old folder starts a new log
        if cfg.get("pretrain"):
            state["pretrain"] = run_pretraining(strategy, cfg.pretrain, stream, seed=seed, run_dir=run_dir)
        state["random_init_counts"] = [class_counts(strategy, d, device) for d in tests]
        state["random_init"] = [_acc(c) for c in state["random_init_counts"]]

    logger = make_logger(cfg, run_dir)
    result: dict[str, Any] = {}
    status, error = "running", None
    try:
        for exp in stream.experiences[state["next"] :]:
            t0 = time.perf_counter()
            start_event(strategy, seed, exp)
            forgotten = stream.forgotten_until(exp.id)
            if exp.kind == "learn":
                state["steps"] = state.get("steps", 0) + learn_experience(
                    cfg, strategy, exp, logger, step_offset=state.get("steps", 0), forgotten=forgotten
                )
            else:
                report = answer_forget_request(strategy, exp, forgotten)
                state["forget_requests"].append(
                    {"id": exp.id, "name": exp.name, "removed_classes": exp.removed_classes, **report}
                )
            counts = [class_counts(strategy, d, device) for d in tests]
            row = [_acc(c) for c in counts]
            state["counts"].append(counts)
            state["rows"].append(row)
            state["evaluations"].append(
                {name: ev.after_event(strategy, stream, exp, device) for name, ev in evaluators.items()}
            )
            state["row_events"].append({"id": exp.id, "kind": exp.kind, "name": exp.name})
            state["timing"].append(time.perf_counter() - t0)
            state["next"] = exp.id + 1
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
            _append_event(run_dir, exp, row, state["timing"][-1])
            if logger is not None:
                logger.log_metrics({f"exp_{j}/test/acc": a for j, a in zip(learn_ids, row)}, step=exp.id)
                logger.save()
        status = "complete"
    except NonFiniteLossError as err:
        status, error = "failed", str(err)
        raise
    except BaseException as err:
        status, error = "failed", f"{type(err).__name__}: {err}"
        raise
    finally:
        result = _write_results(run_dir, cfg, stream, state, status, error)
        if logger is not None and hasattr(logger, "finalize"):
            logger.finalize("success" if status == "complete" else "failed")
    if status == "complete" and evaluators:
        for ev in evaluators.values():
            result["metrics"].update(ev.finalize(run_dir, result))
        write_json(run_dir / "metrics.json", result)
    if status == "complete" and cfg.get("plots", True):
        plot_run(run_dir)
    return result


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
    from clframe.metrics.cl import cl_summary, curves, retained_matrix, undefined_metrics

    picks, removed = stage_rows(state, stream)
    R = R_all = np.zeros((0, len(stream.learn_experiences)))
    summary: dict[str, float | None] = {}
    curve: dict[str, list[float]] = {}
    if picks:
        counts = np.asarray([state["counts"][k] for k in picks], dtype=float)  # (rows, columns, 2, classes)
        correct, total = counts[:, :, 0], counts[:, :, 1]
        R, R_all = retained_matrix(correct, total, removed[-1]), retained_matrix(correct, total)
        init = np.asarray(state["random_init_counts"], dtype=float)[None]
        random_init = retained_matrix(init[:, :, 0], init[:, :, 1], removed[-1])[0]
        summary = cl_summary(R, random_init, setting=stream.setting)
        curve = curves(correct, total, removed)
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
        "metrics": summary,
        "undefined_metrics": undefined_metrics(stream.setting),
        "forget_requests": state.get("forget_requests", []),
        "curves": curve,
        "seconds_per_experience": state["timing"],
        "optimizer_steps": state.get("steps", 0),
        "run_dir": str(run_dir),
    }
    result = _none_for_nan(result)
    write_json(run_dir / "metrics.json", result)
    if len(R):
        header = ",".join(f"exp_{j}" for j in range(R.shape[1]))
        lines = [header] + [",".join(f"{v:.6f}" for v in row) for row in R]
        atomic_write_text(run_dir / "accuracy_matrix.csv", "\n".join(lines) + "\n")
    return result


def _append_event(run_dir: Path, exp, row: list[float], seconds: float) -> None:
    with open(run_dir / "events.jsonl", "a") as fh:
        fh.write(json.dumps({"id": exp.id, "kind": exp.kind, "name": exp.name, "acc": row, "seconds": seconds}) + "\n")
