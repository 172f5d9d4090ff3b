"""The training loop (clframe/fit.py): the Fabric loop equals Lightning's Trainer.fit step for step."""

import math

import numpy as np
import pytest
import torch

from clframe.errors import ConfigError
from clframe.runner import run
from tests.conftest import BLOBS


def _weights(cfg):
    return torch.load(f"{cfg.run_dir}/checkpoints/last.pt", weights_only=True)["model"]


@pytest.mark.parametrize(
    "extra",
    [
        ["strategy=replay", "strategy.momentum=0.9"],
        ["strategy=ewc", "strategy.lam=10", "trainer.max_steps=7"],  # max_steps caps the epochs
        ["strategy=naive", "trainer.max_epochs=-1", "trainer.max_steps=23"],  # -1: epochs until max_steps
        ["strategy=lwf", "trainer.gradient_clip_val=0.05", "trainer.accumulate_grad_batches=3"],
        ["strategy=naive", "trainer.limit_train_batches=0.5"],
        ["strategy=naive", "trainer.limit_train_batches=2"],
        ["strategy=naive", "strategy.optimizer=adam", "+strategy.reset_optimizer=false"],
    ],
)
def test_fabric_and_lightning_engines_give_identical_weights(make_cfg, extra):
    cfgs = [make_cfg(*BLOBS, *extra, f"trainer.engine={e}") for e in ("fabric", "lightning")]
    results = [run(cfg) for cfg in cfgs]
    assert results[0]["accuracy_matrix"] == results[1]["accuracy_matrix"]
    a, b = (_weights(cfg) for cfg in cfgs)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)


def test_max_steps_and_accumulation_count_optimiser_steps(make_cfg):
    """3 epochs of ceil(n / 32) batches; accumulating 2 batches per step halves the steps (rounded up)."""
    m = run(make_cfg(*BLOBS, "strategy=naive", "trainer.accumulate_grad_batches=2", "scenario.n_experiences=2"))
    n_train = [len(e) for e in _train_sizes(make_cfg)]
    expected = sum(3 * math.ceil(math.ceil(n / 32) / 2) for n in n_train)
    capped = run(make_cfg(*BLOBS, "strategy=naive", "trainer.max_steps=4", "scenario.n_experiences=2"))
    assert m["optimizer_steps"] == expected
    assert capped["optimizer_steps"] == 2 * 4


def _train_sizes(make_cfg):
    from clframe.runner import build

    stream, _ = build(make_cfg(*BLOBS, "scenario.n_experiences=2"))
    return [e.train for e in stream.learn_experiences]


def test_fabric_engine_rejects_trainer_only_keys(make_cfg):
    with pytest.raises(
        ConfigError, match=r"^trainer\.val_check_interval=0\.5 is invalid; valid choices: .*engine=lightning"
    ):
        run(make_cfg(*BLOBS, "+trainer.val_check_interval=0.5"))
    with pytest.raises(ConfigError, match=r"^trainer\.max_epochs=-1 is invalid.*max_steps"):
        run(make_cfg(*BLOBS, "trainer.max_epochs=-1"))
    with pytest.raises(ConfigError, match=r"^trainer\.engine='keras'.*valid choices: fabric, lightning"):
        run(make_cfg(*BLOBS, "trainer.engine=keras"))
    with pytest.raises(ConfigError, match=r"^trainer\.strategy='deepspeed' is invalid.*ddp"):
        run(make_cfg(*BLOBS, "trainer.devices=2", "trainer.accelerator=cpu", "trainer.strategy=deepspeed"))
    # the Trainer engine accepts any Trainer argument
    m = run(make_cfg(*BLOBS, "trainer.engine=lightning", "+trainer.val_check_interval=0.5"))
    assert np.asarray(m["accuracy_matrix"])[0, 0] > 0.5


def test_carried_optimizer_state_changes_training_and_resumes_exactly(make_cfg, monkeypatch):
    """reset_optimizer=false: Adam's moments survive experience boundaries (so the result differs from a
    fresh optimiser per experience), are checkpointed, and a killed run resumes to identical weights."""
    from clframe.strategy import Strategy
    from tests.conftest import crash_at

    adam = (*BLOBS, "strategy=naive", "strategy.optimizer=adam", "strategy.lr=0.01")
    fresh, carried = run(make_cfg(*adam)), make_cfg(*adam, "+strategy.reset_optimizer=false")
    full = run(carried)
    assert full["accuracy_matrix"] != fresh["accuracy_matrix"]
    cfg = make_cfg(*adam, "+strategy.reset_optimizer=false")
    ckpt = crash_at(monkeypatch, Strategy, 2, cfg)
    assert ckpt["optimizer"]["state"], "the optimiser state is in the checkpoint"
    resumed = run(make_cfg(f"resume={cfg.run_dir}"))
    assert resumed["accuracy_matrix"] == full["accuracy_matrix"]
    a, b = _weights(carried), _weights(cfg)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_engine_optimize_is_the_one_auxiliary_loop():
    """Precision (bf16 autocast on the CPU for *-mixed), early stop, the finite-loss check and clipping
    behave the same in every auxiliary loop (pretraining, proxies, unlearning, relearning attacks)."""
    from clframe.errors import NonFiniteLossError
    from clframe.fit import Engine
    from clframe.optim import make_optimizer

    layer = torch.nn.Linear(4, 1)
    seen = []

    def loss_of(step):
        out = layer(torch.ones(2, 4))
        seen.append(out.dtype)
        return None if step == 3 else out.float().pow(2).mean() * 1e3

    for precision, dtype in (("bf16-mixed", torch.bfloat16), ("32-true", torch.float32)):
        seen.clear()
        opt = make_optimizer(layer.parameters(), "sgd", lr=0.0)
        assert Engine({"precision": precision, "accelerator": "cpu"}, "none").optimize(opt, range(10), loss_of) == 3
        assert seen == [dtype] * 4  # 3 steps, then the stop
    norms = []
    layer.weight.register_hook(lambda g: norms.append(None))
    opt = make_optimizer(layer.parameters(), "sgd", lr=0.0)
    Engine.default().optimize(opt, range(1), lambda _: layer(torch.ones(2, 4)).pow(2).mean() * 1e3, clip=0.5)
    total = torch.sqrt(sum(p.grad.pow(2).sum() for p in layer.parameters()))
    assert norms and float(total) <= 0.5 + 1e-5  # clipped before the step
    with pytest.raises(NonFiniteLossError, match="experience 4, step 2"):
        Engine.default().optimize(
            opt, range(5), lambda s: layer(torch.ones(1, 4)).sum() * (float("nan") if s == 1 else 1), event=4
        )


@pytest.mark.parametrize("strategy", ["replay", "er", "derpp"])
def test_precision_64_true_trains_in_double_and_matches_32_bit(make_cfg, strategy):
    """``trainer.precision=64-true``: Lightning casts the weights to float64; the float32 data of the stream, the
    memory and the test sets are cast where they enter the model, and random draws inside a training step do not
    follow the default dtype (float64 under Lightning's double context), so the run follows the 32-bit one:
    the same matrix and weights within float32 rounding."""
    base = (*BLOBS, f"strategy={strategy}", "strategy.buffer_size=40")
    single = run(make_cfg(*base))
    double = run(make_cfg(*base, "trainer.precision=64-true"))
    assert double["status"] == "complete" and double["accuracy_matrix"] == single["accuracy_matrix"]
    w32, w64 = (torch.load(f"{r['run_dir']}/checkpoints/last.pt", weights_only=True)["model"] for r in (single, double))
    floats = [k for k, v in w64.items() if v.is_floating_point()]
    assert floats and all(w64[k].dtype == torch.float64 for k in floats)
    assert max(float((w64[k] - w32[k].double()).abs().max()) for k in floats) < 1e-4


def test_mixed_precision_autocasts_every_training_step(make_cfg, monkeypatch):
    """``*-mixed`` on one device: each training step runs under autocast (bf16 on the CPU); 32-true does not."""
    from clframe.strategies.naive import Naive

    seen: list[bool] = []
    original = Naive.training_loss
    monkeypatch.setattr(
        Naive, "training_loss", lambda self, b: seen.append(torch.is_autocast_enabled("cpu")) or original(self, b)
    )
    run(make_cfg(*BLOBS, "strategy=naive", "trainer.precision=bf16-mixed"))
    assert seen and all(seen)
    seen.clear()
    run(make_cfg(*BLOBS, "strategy=naive"))
    assert seen and not any(seen)
