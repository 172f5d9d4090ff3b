"""The training loop of one experience, on Lightning Fabric (default) or the Lightning Trainer.

Why a loop of our own: Lightning's ``Trainer`` adds ~1.5 ms of Python per optimiser step on
these CPUs (hook dispatch, closures, profiler contexts), i.e. ~30 % of a small-MLP step
(``python benchmarks/engine_overhead.py``). ``Fabric`` keeps what we need from Lightning —
device choice, precision plugins and DDP — at no per-step cost. With ``trainer.devices=N`` (Fabric engine,
``trainer.strategy=ddp``) every rank trains on its shard of each global batch and DDP averages the gradients;
what else each rank does is in :mod:`clframe.distributed`. ``trainer.engine=lightning``
runs the same experience through ``Trainer.fit`` instead (Lightning callbacks, profilers);
a test checks that both engines give identical weights.

Both engines call the same LightningModule hooks, in the order and with the arguments of
``Trainer.fit`` (automatic optimisation, one optimiser; a test records both sequences):
``setup("fit")``, ``configure_model``, ``configure_optimizers`` (any form Lightning accepts; LR
schedulers with ``interval`` "step"/"epoch" and ``frequency`` step where Lightning steps them, through
``lr_scheduler_step``), ``on_fit_start``, ``on_train_start``; per epoch ``on_train_epoch_start``; per
batch ``on_before_batch_transfer``, ``transfer_batch_to_device``, ``on_after_batch_transfer``,
``on_train_batch_start(batch, i)`` (-1 skips the rest of the epoch), then on the batch that completes an
accumulation window ``optimizer_step(epoch, i, optimizer, closure)`` whose closure runs ``training_step``,
``on_before_zero_grad`` + ``optimizer_zero_grad`` (first batch of a window only), ``on_before_backward(loss)``,
``backward``, ``on_after_backward``, then ``on_before_optimizer_step(optimizer)`` and gradient clipping;
other batches run the closure's part without the step; then ``on_train_batch_end({"loss": loss}, batch, i)``
(the loss divided by ``accumulate_grad_batches``, as Lightning passes it); ``on_train_epoch_end``;
``on_train_end``, ``on_fit_end``, ``teardown("fit")``. Lightning-engine only: callbacks,
``configure_callbacks``, ``prepare_data``, ``configure_gradient_clipping`` (Fabric clips itself with
``trainer.gradient_clip_val`` / ``gradient_clip_algorithm``), ReduceLROnPlateau, manual optimisation.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from clframe import distributed
from clframe.errors import ConfigError, NonFiniteLossError
from clframe.optim import gradient_step

ENGINES = ["fabric", "lightning"]
# trainer.* keys the Fabric engine understands (the Lightning engine passes all keys to Trainer)
FABRIC_KEYS = {
    "engine", "max_epochs", "max_steps", "accelerator", "devices", "num_nodes", "strategy", "precision",
    "log_every_n_steps", "gradient_clip_val", "gradient_clip_algorithm", "accumulate_grad_batches", "deterministic",
    "limit_train_batches",
}  # fmt: skip
# several processes (trainer.devices > 1 or num_nodes > 1): data-parallel, see clframe.distributed
DDP_STRATEGIES = ["auto", "ddp", "ddp_find_unused_parameters_true"]


def trainer_options(cfg: DictConfig) -> dict[str, Any]:
    """``cfg.trainer`` as a dict, validated for the chosen engine."""
    opts = OmegaConf.to_container(cfg.trainer, resolve=True)
    engine = opts.pop("engine", "fabric")
    if engine not in ENGINES:
        raise ConfigError("trainer.engine", engine, ENGINES)
    if engine == "fabric":
        for key in opts:
            if key not in FABRIC_KEYS:
                raise ConfigError(
                    f"trainer.{key}", opts[key], sorted(FABRIC_KEYS), hint="or set trainer.engine=lightning"
                )
        if opts.get("gradient_clip_algorithm") not in (None, "norm", "value"):
            raise ConfigError("trainer.gradient_clip_algorithm", opts["gradient_clip_algorithm"], ["norm", "value"])
        devices = opts.get("devices", 1)
        single = devices in (1, "1") or (isinstance(devices, list) and len(devices) == 1)
        multi = not single or int(opts.get("num_nodes") or 1) > 1
        if multi and str(opts.get("strategy", "auto")) not in DDP_STRATEGIES:
            raise ConfigError(
                "trainer.strategy",
                opts.get("strategy", "auto"),
                DDP_STRATEGIES,
                hint=f"trainer.devices={devices}: the fabric engine runs several devices with DDP only",
            )
    elif distributed.local_world(opts) > 1:
        raise ConfigError(
            "trainer.engine",
            engine,
            ["fabric"],
            hint="trainer.devices > 1 runs on the fabric engine",
        )
    check_trainer_values(opts)
    opts["engine"] = engine
    return opts


PROGRESS_BARS = ["tqdm", "rich", "none"]


def _precisions() -> list[str]:
    import typing

    from lightning.fabric.connector import _PRECISION_INPUT

    return [str(v) for group in typing.get_args(_PRECISION_INPUT) for v in typing.get_args(group)]


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def check_trainer_values(opts: dict[str, Any]) -> None:
    """Refuse trainer values that Lightning would accept silently or misread (``gradient_clip_val=-1`` turns
    training into gradient ascent, ``max_epochs=0`` trains nothing, ``limit_train_batches=0`` too)."""

    def bad(key: str, expected: str) -> ConfigError:
        return ConfigError(f"trainer.{key}", opts[key], expected)

    epochs = opts.get("max_epochs")
    if epochs is not None and not (_is_int(epochs) and (epochs >= 1 or epochs == -1)):
        raise bad("max_epochs", "a positive integer, or -1 with trainer.max_steps > 0")
    steps = opts.get("max_steps")
    if steps is not None and not (_is_int(steps) and (steps >= 1 or steps == -1)):
        raise bad("max_steps", "a positive integer, or -1 (no limit)")
    if epochs == -1 and not (_is_int(steps) and steps >= 1):
        raise bad("max_epochs", "a positive integer, or -1 with trainer.max_steps > 0")
    limit = opts.get("limit_train_batches")
    if limit is not None and not ((_is_int(limit) and limit >= 1) or (isinstance(limit, float) and 0 < limit <= 1)):
        raise bad("limit_train_batches", "null, a positive integer (batches) or a fraction in (0, 1]")
    accumulate = opts.get("accumulate_grad_batches")
    if accumulate is not None and not (_is_int(accumulate) and accumulate >= 1):
        raise bad("accumulate_grad_batches", "a positive integer")
    clip = opts.get("gradient_clip_val")
    if clip is not None and not (
        isinstance(clip, (int, float)) and not isinstance(clip, bool) and math.isfinite(clip) and clip >= 0
    ):
        raise bad("gradient_clip_val", "null (no clipping) or a non-negative finite number")
    every = opts.get("log_every_n_steps")
    if every is not None and not (_is_int(every) and every >= 0):
        raise bad("log_every_n_steps", "a non-negative integer")
    if "deterministic" in opts and not isinstance(opts["deterministic"], bool) and opts["deterministic"] != "warn":
        raise bad("deterministic", "true, false or warn")
    if "precision" in opts and str(opts["precision"]) not in _precisions():
        raise ConfigError("trainer.precision", opts["precision"], _precisions())
    accelerators = ["auto", "cpu", "gpu", "cuda", "mps", "tpu"]
    if "accelerator" in opts and opts["accelerator"] not in accelerators:
        raise ConfigError("trainer.accelerator", opts["accelerator"], accelerators)
    devices = opts.get("devices")
    ok_devices = (
        devices in (None, "auto", -1)
        or (_is_int(devices) and devices >= 1)
        or (isinstance(devices, str) and devices.strip().isdigit() and int(devices) >= 1)
        or (isinstance(devices, list) and devices and all(_is_int(d) and d >= 0 for d in devices))
    )
    if not ok_devices:
        raise bad("devices", "a positive integer, a list of device ids, or auto")


def batches_per_epoch(n_batches: int, opts: dict[str, Any]) -> int:
    """``limit_train_batches`` as Lightning reads it: an int is a count, a float a fraction."""
    limit = opts.get("limit_train_batches")
    if limit is None:
        return n_batches
    if isinstance(limit, float) and limit <= 1.0:
        return int(n_batches * limit)
    return min(n_batches, int(limit))


def max_epochs(opts: dict[str, Any]) -> float:
    """``max_epochs`` as Lightning reads it: ``-1`` means no limit (then ``max_steps`` must be set)."""
    epochs = opts.get("max_epochs")
    epochs = 1 if epochs is None else int(epochs)
    if epochs < 0:
        if int(opts.get("max_steps") or -1) <= 0:
            raise ConfigError("trainer.max_epochs", epochs, "a positive number, or -1 with trainer.max_steps > 0")
        return math.inf
    return epochs


def planned_steps(n_batches: int, opts: dict[str, Any]) -> int:
    """Optimiser steps one experience will take (``max_steps`` caps ``max_epochs`` epochs)."""
    per_epoch = math.ceil(batches_per_epoch(n_batches, opts) / int(opts.get("accumulate_grad_batches") or 1))
    epochs = max_epochs(opts)
    max_steps = int(opts.get("max_steps") or -1)
    if epochs == math.inf:
        return max_steps if per_epoch else 0
    total = per_epoch * int(epochs)
    return min(total, max_steps) if max_steps > 0 else total


@dataclass(frozen=True)
class Engine:
    """The training loop's settings, validated once from ``cfg.trainer`` and ``cfg.progress_bar`` by the
    runner's ``build``: what :func:`fit` (and everything that trains an experience) gets instead of the config."""

    options: Mapping[str, Any]
    progress_bar: str = "tqdm"

    @classmethod
    def from_config(cls, cfg: DictConfig) -> Engine:
        """Everything :func:`fit` will read from ``cfg``, checked (before a run writes anything)."""
        options, bar = trainer_options(cfg), cfg.get("progress_bar", "tqdm")
        if bar not in PROGRESS_BARS:
            raise ConfigError("progress_bar", bar, PROGRESS_BARS)
        return cls(options, bar)

    @property
    def device(self) -> torch.device:
        """Where evaluation and gradient-free updates run: the accelerator the training loop will pick."""
        accel = str(self.options.get("accelerator", "auto"))
        if torch.cuda.is_available() and accel in ("auto", "gpu", "cuda"):
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)) if distributed.rank() else 0)
        return torch.device("cpu")

    @property
    def processes(self) -> int:
        """Processes this machine runs for one run (``trainer.devices``; 1 without DDP)."""
        return distributed.local_world(dict(self.options))

    def join(self) -> None:
        """Join this run's process group (several processes: ``trainer.devices > 1``, or an external launcher
        such as torchrun / srun); a no-op for one process. Called once, before the run directory is touched."""
        if self.processes > 1 or _multi_node(self.options):
            distributed.threads_per_process(self.processes)
            _fabric(dict(self.options)).launch()

    def identity(self) -> dict[str, Any]:
        """What of the engine changes training (for cache keys): every option but the progress bar."""
        return dict(self.options)

    @classmethod
    def default(cls) -> Engine:
        """32-bit, no progress bar: for a strategy used outside a run (no ``strategy.engine``)."""
        return cls({"precision": "32-true"}, "none")

    def autocast(self, device: torch.device | None = None):
        """The mixed-precision context of ``trainer.precision`` (``*-mixed``: bf16 on the CPU, as Lightning;
        fp16 on CUDA for ``16-mixed``); a no-op for ``*-true`` precisions."""
        precision = str(self.options.get("precision", "32-true"))
        if not precision.endswith("-mixed"):
            return contextlib.nullcontext()
        device = device or self.device
        half = torch.float16 if precision.startswith("16") and device.type == "cuda" else torch.bfloat16
        return torch.autocast(device_type=device.type, dtype=half)

    def optimize(
        self,
        opt: torch.optim.Optimizer,
        items: Iterable,
        loss_of: Callable[[Any], torch.Tensor],
        *,
        clip: float | None = None,
        total: int | None = None,
        desc: str = "",
        event: int = -1,
        progress: bool = True,
    ) -> int:
        """The one loop of every auxiliary optimisation (pretraining, CLR's proxy, DESIRE's coefficients,
        head refinement, unlearning, relearning attacks): for each of ``items`` (batches, or step numbers),
        ``loss_of(item)`` under the engine's precision, the finite-loss check (:class:`NonFiniteLossError`
        naming ``event`` and the step), backward, gradient clipping at ``clip``, the optimiser step, the
        engine's progress bar (``progress=False`` for loops run inside a forward pass). ``loss_of`` may return
        ``None`` to stop early. Returns the steps taken."""
        total = total if total is not None else (len(items) if hasattr(items, "__len__") else None)
        update = _progress(self.progress_bar if progress else "none", total or 0, None, desc)
        step = 0
        try:
            for item in items:
                with self.autocast(next((p.device for g in opt.param_groups for p in g["params"]), None)):
                    loss = loss_of(item)
                if loss is None:
                    break
                value = float(loss.detach())
                if not math.isfinite(value):
                    raise NonFiniteLossError(event, step + 1, value)
                gradient_step(opt, loss, clip=clip)
                step += 1
                update(step, value)
        finally:
            update(None, None)
        return step


def fit(strategy, loader, engine: Engine, logger=None, step_offset: int = 0) -> int:
    """Train ``strategy`` on the batches of ``loader``; return the number of optimiser steps taken."""
    opts = dict(engine.options)
    if opts.pop("engine", "fabric") == "lightning":
        return _fit_lightning(strategy, loader, opts, engine.progress_bar, logger)
    return _fit_fabric(strategy, loader, opts, engine.progress_bar, logger, step_offset)


_FABRICS: dict[str, Any] = {}


def _multi_node(opts: Mapping[str, Any]) -> bool:
    """Several machines (``trainer.num_nodes``), or processes started by an external launcher (torchrun, srun)."""
    return int(opts.get("num_nodes") or 1) > 1 or distributed.external_launcher()


def _fabric(opts: dict[str, Any]):
    """One Fabric per device/precision setting, reused by every experience of the process."""
    from lightning.fabric import Fabric

    kw = {k: opts[k] for k in ("accelerator", "devices", "num_nodes", "strategy", "precision") if k in opts}
    if distributed.alone() or (distributed.local_world(opts) == 1 and not _multi_node(opts)):
        kw.update(devices=1, num_nodes=1, strategy="auto")  # one process (or rank 0 alone inside main_only())
    key = repr(sorted(kw.items()))
    if key not in _FABRICS:
        several = kw.get("devices") not in (1, "1")  # the cluster environment of a group this process belongs to
        _FABRICS[key] = Fabric(**kw, plugins=distributed.cluster_plugins() if several else None)
    return _FABRICS[key]


def _fit_fabric(strategy, loader, opts, bar, logger, step_offset) -> int:
    fabric = _fabric(opts)
    if opts.get("deterministic"):
        torch.use_deterministic_algorithms(True, warn_only=True)
    every = int(opts.get("log_every_n_steps") or 0)
    accumulate = int(opts.get("accumulate_grad_batches") or 1)
    clip, clip_by = opts.get("gradient_clip_val"), opts.get("gradient_clip_algorithm") or "norm"
    n_batches = batches_per_epoch(len(loader), opts)
    total = planned_steps(len(loader), opts)
    strategy.step_in_experience, strategy.steps_per_experience = 0, total
    strategy.setup(stage="fit")
    strategy.configure_model()
    module = fabric.setup_module(strategy)
    # under Fabric, LightningModule.trainer is Lightning's shim over the Fabric object: this makes
    # self.trainer.estimated_stepping_batches (Strategy.on_train_start, OneCycleLR, ...) read as under Trainer.fit
    fabric.estimated_stepping_batches = total
    optimizer, schedulers = _optimizer_and_schedulers(strategy, fabric)
    raw = optimizer.optimizer  # the hooks receive the torch optimiser, as under Trainer.fit
    precision = fabric.strategy.precision
    scaler = getattr(precision, "scaler", None)  # fp16 GradScaler (CUDA): it refuses optimizer.step(closure)
    # one device at full precision: the wrapper's forward redirection (autocast / DDP sync contexts) does
    # nothing, so training_step is called directly (a measured ~0.05 ms per step; benchmarks/engine_overhead.py)
    direct = fabric.world_size == 1 and str(opts.get("precision", "32-true")) in ("32-true", "32")
    if direct:
        training_step = strategy.training_step
    elif fabric.world_size > 1:  # DDP's forward redirection enters the precision context
        training_step = module.training_step
    else:  # one device: Fabric calls training_step as a plain method, so enter the precision context here

        def training_step(batch, i):  # *-mixed: autocast (*-true: backbones cast inputs to their weights' dtype)
            with precision.forward_context():
                return strategy.training_step(batch, i)

    stepper = _StepAfterClosure(optimizer) if scaler is not None else optimizer
    strategy.train()
    strategy.on_fit_start()
    strategy.zero_grad()
    strategy.on_train_start()
    progress = _progress(bar if distributed.is_main() else "none", total, strategy)
    step, epoch, epochs, loss = 0, 0, max_epochs(opts), None
    while epoch < epochs and step < total:
        strategy.on_train_epoch_start()
        for i, batch in enumerate(loader):
            if i >= n_batches:
                break
            batch = strategy.on_before_batch_transfer(batch, 0)
            batch = strategy.transfer_batch_to_device(batch, fabric.device, 0)
            batch = strategy.on_after_batch_transfer(batch, 0)
            batch = distributed.shard(batch)  # this rank's part of the global batch (the batch itself on one process)
            last = i + 1 == n_batches
            if strategy.on_train_batch_start(batch, i) == -1:  # -1: skip the rest of the epoch (as Lightning)
                _step_schedulers(strategy, schedulers, "step", i + 1)
                _step_schedulers(strategy, schedulers, "epoch", epoch + 1)
                break
            result: dict[str, Any] = {}

            def closure(batch=batch, i=i, result=result, step=step, epoch=epoch):  # training_step, zero_grad, backward
                strategy.step_in_experience = step  # steps before this batch, set where Lightning sets it
                out = training_step(batch, i)
                result["loss"] = out["loss"] if isinstance(out, Mapping) else out
                if i % accumulate == 0:  # first batch of an accumulation window
                    strategy.on_before_zero_grad(raw)
                    strategy.optimizer_zero_grad(epoch, i, raw)
                scaled = result["loss"] / accumulate
                strategy.on_before_backward(scaled)
                strategy.backward(scaled)
                strategy.on_after_backward()
                extra = {k: v for k, v in out.items() if k != "loss"} if isinstance(out, Mapping) else {}
                result["outputs"] = {"loss": scaled.detach().clone(), **extra}
                return result["outputs"]["loss"]

            stepping = (i + 1) % accumulate == 0 or last
            if stepping:

                def step_closure(closure=closure):  # then the pre-step hook and clipping, inside optimizer.step
                    value = closure()
                    if scaler is not None:
                        precision.unscale_gradients(raw)  # the hook and clipping see true gradients
                    strategy.on_before_optimizer_step(raw)
                    if clip:
                        _clip(precision.main_params(raw), float(clip), clip_by)
                    return value

                strategy.optimizer_step(epoch, i, stepper, step_closure)
                step += 1
                _step_schedulers(strategy, schedulers, "step", i + 1)
            else:
                closure()
            if last:
                _step_schedulers(strategy, schedulers, "epoch", epoch + 1)
            loss = result["loss"].detach()
            strategy.on_train_batch_end(result["outputs"], batch, i)
            if stepping and every and (step % every == 0 or step == total):
                # checked at log points: no per-step sync (several processes: the global batch's mean)
                value = strategy.finite_loss(loss.new_tensor(distributed.mean(float(loss))), step)
                progress(step, value)
                if logger is not None:
                    logger.log_metrics({"train/loss": value}, step=step_offset + step)
            if step >= total:
                break
        strategy.on_train_epoch_end()
        epoch += 1
    _keep_optimizer_state(strategy, optimizer)
    distributed.sync_buffers(strategy)  # BatchNorm statistics of rank 0's shards, on every rank
    if loss is not None:
        strategy.finite_loss(loss.new_tensor(distributed.mean(float(loss))), step)
    progress(None, None)
    strategy.on_train_end()
    strategy.on_fit_end()
    strategy.teardown(stage="fit")
    return step


def _optimizer_and_schedulers(strategy, fabric):
    """``configure_optimizers()`` read by Lightning's own parser (an optimiser, ``([opt], [sched])``, a dict
    with ``lr_scheduler``, ...): the Fabric-wrapped optimiser and the scheduler configs (interval, frequency)."""
    from lightning.pytorch.core.optimizer import _configure_optimizers, _configure_schedulers_automatic_opt

    optimizers, schedulers, monitor = _configure_optimizers(strategy.configure_optimizers())
    configs = _configure_schedulers_automatic_opt(schedulers, monitor)
    if len(optimizers) != 1 or not strategy.automatic_optimization or any(c.reduce_on_plateau for c in configs):
        raise ConfigError(
            "trainer.engine",
            "fabric",
            ["lightning"],
            hint=f"{type(strategy).__name__}: the fabric engine runs one optimiser with automatic optimisation"
            " and no ReduceLROnPlateau (it monitors logged metrics)",
        )
    return fabric.setup_optimizers(optimizers[0]), configs


def _step_schedulers(strategy, configs, interval: str, index: int) -> None:
    """Lightning's rule: a scheduler of this ``interval`` steps when ``index % frequency == 0``; ``index`` is
    the 1-based batch index within the epoch for ``"step"`` (so accumulation counts batches), the epoch for
    ``"epoch"``."""
    for config in configs:
        if config.interval == interval and index % config.frequency == 0:
            strategy.lr_scheduler_step(config.scheduler, None)


def _clip(params, value: float, algorithm: str) -> None:
    """Gradient clipping as Lightning's precision plugins do it (norm: total 2-norm; value: element-wise)."""
    if algorithm == "value":
        torch.nn.utils.clip_grad_value_(params, value)
    else:
        torch.nn.utils.clip_grad_norm_(params, value)


class _StepAfterClosure:
    """The optimiser the ``optimizer_step`` hook gets under a GradScaler, which refuses ``step(closure)``:
    ``step(closure)`` runs the closure, then the scaled step (what Lightning's MixedPrecision plugin does)."""

    def __init__(self, optimizer):
        self.optimizer = optimizer

    def step(self, closure=None):
        value = closure() if closure is not None else None
        self.optimizer.step()
        return value

    def __getattr__(self, name):
        return getattr(self.optimizer, name)


def _keep_optimizer_state(strategy, optimizer) -> None:
    """Remember the optimiser state for the next experience (``strategy.reset_optimizer=false``)."""
    if not strategy.reset_optimizer:
        strategy.optimizer_state = optimizer.state_dict()


def _progress(bar: str, total: int, strategy, name: str = ""):
    """A callable ``update(step, loss)``; ``update(None, None)`` closes the bar."""
    if strategy is not None:
        name = strategy.experience.name if strategy.experience is not None else "fit"
    if bar == "none":
        return lambda step, loss: None
    if bar == "rich":
        from rich.progress import Progress

        prog = Progress(transient=True)
        prog.start()
        task = prog.add_task(name, total=total)

        def update(step, loss):
            if step is None:
                prog.stop()
            else:
                prog.update(task, completed=step, description=f"{name} loss {loss:.4f}")

        return update
    from tqdm.auto import tqdm

    pbar = tqdm(total=total, desc=name, leave=False, dynamic_ncols=True)

    def update(step, loss):
        if step is None:
            pbar.close()
        else:
            pbar.n = step
            pbar.set_postfix(loss=f"{loss:.4f}", refresh=True)

    return update


def _fit_lightning(strategy, loader, opts, bar, logger) -> int:
    import lightning.pytorch as pl

    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)  # one Trainer per experience: keep the banner quiet
    callbacks = []
    if bar == "rich":
        from lightning.pytorch.callbacks import RichProgressBar

        callbacks.append(RichProgressBar())
    opts.setdefault("enable_progress_bar", bar != "none")
    trainer = pl.Trainer(
        **opts,
        logger=logger if logger is not None else False,
        callbacks=callbacks,
        enable_checkpointing=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*(does not have many workers|smaller than the logging interval|treespec).*")
        trainer.fit(strategy, train_dataloaders=loader)
    _keep_optimizer_state(strategy, trainer.optimizers[0])
    return int(trainer.global_step)
