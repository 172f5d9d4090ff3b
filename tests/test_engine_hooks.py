"""Both engines call the LightningModule hooks in the same order, with the same arguments (clframe/fit.py)."""

from __future__ import annotations

import warnings

import pytest
import torch

from clframe.errors import ConfigError
from clframe.fit import Engine, fit
from clframe.strategies.naive import Naive

HOOKS = (
    "setup", "configure_model", "on_fit_start", "on_train_epoch_start", "on_before_batch_transfer",
    "transfer_batch_to_device", "on_after_batch_transfer", "optimizer_step", "training_step", "on_before_zero_grad",
    "optimizer_zero_grad", "on_before_backward", "backward", "on_after_backward", "on_before_optimizer_step",
    "lr_scheduler_step", "on_train_batch_end", "on_train_epoch_end", "on_train_end", "on_fit_end", "teardown",
)  # fmt: skip
OPTIMIZER_ARG = {"on_before_zero_grad": 0, "optimizer_zero_grad": 2, "on_before_optimizer_step": 0}
BATCH_IDX_ARG = {"optimizer_step": 1, "optimizer_zero_grad": 1, "training_step": 1, "on_train_batch_end": 2}


class Recorder(Naive):
    """Naive + a log of every hook call: (name, optimiser steps so far, argument summary); ``values`` keeps the
    losses and gradient norms the hooks saw."""

    def __init__(self, *args, schedule: str | None = None, skip_at: int | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.schedule, self.skip_at, self.calls, self.values, self.loss_steps = schedule, skip_at, [], [], []

    def record(self, name, args, kwargs):
        # training_step: Lightning's Strategy.training_step sets step_in_experience inside (training_loss sees it)
        entry = [name, None if name == "training_step" else self.step_in_experience, tuple(sorted(kwargs.items()))]
        if name in BATCH_IDX_ARG:
            entry.append(args[BATCH_IDX_ARG[name]])
        if name in OPTIMIZER_ARG:  # the torch optimiser itself, as under Trainer.fit
            opt = args[OPTIMIZER_ARG[name]]
            entry += [type(opt).__name__, opt.param_groups[0]["lr"]]
        if name == "on_before_optimizer_step":  # accumulated, not yet clipped gradients
            self.values.append(sum(float(p.grad.pow(2).sum()) for p in self.parameters() if p.grad is not None))
        if name in ("on_before_backward", "on_train_batch_end"):
            self.values.append(float(args[0] if name == "on_before_backward" else args[0]["loss"]))
        self.calls.append(tuple(entry))

    def training_loss(self, batch):
        self.calls.append(("training_loss",))
        self.loss_steps.append(self.step_in_experience)  # see test_training_loss_sees_the_steps_taken
        return super().training_loss(batch)

    def on_train_start(self):
        self.calls.append(("on_train_start", self.step_in_experience))
        super().on_train_start()  # reads self.trainer.estimated_stepping_batches
        self.calls.append(("steps_per_experience", self.steps_per_experience))

    def on_train_batch_start(self, batch, batch_idx):
        self.calls.append(("on_train_batch_start", self.step_in_experience, batch_idx))
        first_epoch = sum(c[0] == "on_train_epoch_start" for c in self.calls) == 1
        return -1 if first_epoch and batch_idx == self.skip_at else None

    def configure_optimizers(self):
        self.calls.append(("configure_optimizers",))
        opt = super().configure_optimizers()
        if self.schedule == "step_dict":  # halve the lr on every 2nd batch that steps
            sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step", "frequency": 2}}
        if self.schedule == "epoch_tuple":
            return [opt], [torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.3)]
        if self.schedule == "one_cycle":  # reads the Trainer's estimate: must work under Fabric too
            total = self.trainer.estimated_stepping_batches
            sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=total)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
        return opt


def _recording(name):
    def hook(self, *args, **kwargs):
        self.record(name, args, kwargs)
        return getattr(Naive, name)(self, *args, **kwargs)

    return hook


for _name in HOOKS:
    setattr(Recorder, _name, _recording(_name))


def _strategy(make_cfg, overrides, cls=Recorder, **kwargs):
    from clframe.registry import BACKBONES
    from clframe.runner import build

    cfg = make_cfg("scenario=split_blobs", "backbone.hidden=[8]", "trainer.max_epochs=2",
                   "trainer.limit_train_batches=5", *overrides)  # fmt: skip
    stream, _ = build(cfg)
    torch.manual_seed(0)
    strategy = cls(BACKBONES.build(cfg.backbone, input_shape=stream.input_shape), stream.n_classes, batch_size=16,
                   **kwargs)  # fmt: skip
    strategy.before_experience(stream.experiences[0])
    return strategy, strategy.train_dataloader_for(stream.experiences[0]), cfg


def _run(make_cfg, engine, overrides, **kwargs):
    strategy, loader, cfg = _strategy(make_cfg, [f"trainer.engine={engine}", *overrides], **kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        steps = fit(strategy, loader, Engine.from_config(cfg))
    return strategy, steps


CASES = {
    "plain": ([], {}),
    "accumulate": (["trainer.accumulate_grad_batches=2"], {}),
    "accumulate_clip_momentum": (["trainer.accumulate_grad_batches=3", "trainer.gradient_clip_val=0.05"],
                                 {"momentum": 0.9}),
    "clip_by_value": (["+trainer.gradient_clip_algorithm=value", "trainer.gradient_clip_val=0.01"], {}),
    "step_scheduler": (["trainer.accumulate_grad_batches=2"], {"schedule": "step_dict"}),
    "epoch_scheduler": ([], {"schedule": "epoch_tuple"}),
    "one_cycle_max_steps": (["trainer.max_steps=7"], {"schedule": "one_cycle"}),
    "skip_rest_of_epoch": (["trainer.accumulate_grad_batches=2"], {"skip_at": 3, "schedule": "epoch_tuple"}),
}  # fmt: skip


@pytest.mark.parametrize("case", CASES)
def test_fabric_calls_the_hooks_of_trainer_fit_in_the_same_order(make_cfg, case):
    overrides, kwargs = CASES[case]
    (fab, n_fab), (lit, n_lit) = (_run(make_cfg, e, overrides, **kwargs) for e in ("fabric", "lightning"))
    assert n_fab == n_lit > 0
    assert fab.calls == lit.calls
    torch.testing.assert_close(fab.values, lit.values, rtol=1e-5, atol=1e-7)
    for (k, a), b in zip(fab.state_dict().items(), lit.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=k)
    assert sum(c[0] == "on_before_optimizer_step" for c in fab.calls) == n_fab


def test_accumulation_and_step_schedule_follow_the_hand_written_pattern(make_cfg):
    """5 batches per epoch, accumulate 2: windows {0,1}, {2,3}, {4}; zero_grad on a window's first batch, the
    step (with on_before_optimizer_step) on its last. A "step" scheduler of frequency 2 steps when the 1-based
    batch index is even (after batches 1 and 3, not the lone batch 4), each epoch: lr 0.01 halves twice."""
    s, steps = _run(make_cfg, "fabric", ["trainer.accumulate_grad_batches=2"], schedule="step_dict")
    names = [c[0] for c in s.calls]
    epoch = s.calls[names.index("on_train_epoch_start") : names.index("on_train_epoch_end")]
    assert [c[3] for c in epoch if c[0] == "optimizer_zero_grad"] == [0, 2, 4]
    assert [c[3] for c in epoch if c[0] == "optimizer_step"] == [1, 3, 4]
    lrs = [c[-1] for c in s.calls if c[0] == "on_before_optimizer_step"]
    assert lrs == pytest.approx([0.01, 0.005, 0.0025, 0.0025, 0.00125, 0.000625])
    first = names.index("optimizer_step")  # batch 1: the closure runs inside the step, no zero_grad
    assert names[first : first + 7] == [
        "optimizer_step", "training_step", "training_loss", "on_before_backward", "backward", "on_after_backward",
        "on_before_optimizer_step",
    ]  # fmt: skip
    assert steps == 6 and ("steps_per_experience", 6) in s.calls  # Strategy.on_train_start ran under Fabric
    # step_in_experience = optimiser steps taken before the batch, as training_loss sees it (2 batches per step)
    assert s.loss_steps == [0, 0, 1, 1, 2, 3, 3, 4, 4, 5]


class Plateau(Naive):
    def configure_optimizers(self):
        opt = super().configure_optimizers()
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt)
        return {"optimizer": opt, "lr_scheduler": sched, "monitor": "train/loss"}


def test_fabric_refuses_what_only_the_trainer_runs(make_cfg):
    strategy, loader, cfg = _strategy(make_cfg, [], cls=Plateau)
    with pytest.raises(ConfigError, match=r"^trainer\.engine='fabric' is invalid; valid choices: lightning"):
        fit(strategy, loader, Engine.from_config(cfg))
    with pytest.raises(ConfigError, match=r"^trainer\.gradient_clip_algorithm='max'.*valid choices: norm, value"):
        fit(strategy, loader, Engine.from_config(make_cfg("+trainer.gradient_clip_algorithm=max")))


def test_gradients_left_on_the_parameters_do_not_leak_into_the_first_step(make_cfg):
    """Both engines zero the gradients before the first backward: stale ``.grad`` (e.g. an unlearner's
    last step on forgotten samples) must not change the first update (the old Fabric loop added it)."""
    weights = []
    for stale in (False, True):
        strategy, loader, cfg = _strategy(make_cfg, [], cls=Naive)
        if stale:
            for p in strategy.parameters():
                p.grad = torch.full_like(p, 100.0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit(strategy, loader, Engine.from_config(cfg))
        weights.append({k: v.clone() for k, v in strategy.state_dict().items()})
    for k, v in weights[0].items():
        torch.testing.assert_close(v, weights[1][k], msg=k)
