"""HyperInterval: interval arithmetic is sound, weight boxes certify predictions, near-zero forgetting,
universal embedding inside every task's box, resume with embeddings."""

import numpy as np
import pytest
import torch
from torch import nn

from clframe.fit import Engine
from clframe.runner import build, learn_experience, run
from clframe.strategies.hyperinterval import HyperInterval
from clframe.strategies.intervals import forward_point, ibp, interval_affine
from tests.conftest import crash_at

DIGITS = (
    "scenario=split_digits_task",
    "backbone=mlp",
    "backbone.hidden=[32]",
    "trainer.max_epochs=5",
    "strategy=hyperinterval",
    "strategy.batch_size=32",
    "strategy.hnet_hidden=[50]",
    "strategy.lr=0.005",
    "strategy.beta=0.05",
    "strategy.epsilon=1",
)


def _learn(strategy, cfg, exps):
    for exp in exps:
        torch.manual_seed(exp.id)
        strategy.seed = exp.id
        learn_experience(Engine.from_config(cfg), strategy, exp)
    return strategy.eval()


def _uniform(lo, hi, n, gen):
    return lo + (hi - lo) * torch.rand((n, *lo.shape), generator=gen)


@pytest.mark.parametrize("nonneg", [True, False])
def test_interval_affine_contains_every_sample(nonneg):
    gen = torch.Generator().manual_seed(0)
    lo = torch.randn(4, 6, generator=gen).abs() if nonneg else torch.randn(4, 6, generator=gen)
    hi = lo + torch.rand(4, 6, generator=gen)
    w_lo = torch.randn(3, 6, generator=gen)
    w_hi = w_lo + torch.rand(3, 6, generator=gen)
    out_lo, out_hi = interval_affine(torch.nn.functional.linear, lo, hi, w_lo, w_hi)
    for x, w in zip(_uniform(lo, hi, 200, gen), _uniform(w_lo, w_hi, 200, gen), strict=True):
        y = x @ w.t()
        assert bool((y >= out_lo - 1e-5).all() and (y <= out_hi + 1e-5).all())


def test_weight_box_certifies_predictions(make_cfg):
    """Embeddings sampled in a task's box give weights in its weight box; weights sampled in the weight
    box give logits in the IBP bounds; on certified inputs every such network predicts the same class."""
    cfg = make_cfg(*DIGITS)
    stream, strategy = build(cfg)
    exps = stream.learn_experiences
    _learn(strategy, cfg, exps[:2])
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        e_lo, e_hi = strategy.embedding_box(["0"], strategy.epsilon)
        w_lo, w_hi = (w[0] for w in strategy.weight_box(e_lo, e_hi))
        for e in _uniform(e_lo[0], e_hi[0], 50, gen):
            w = strategy.weight_box(e[None], e[None])[0][0]
            assert bool((w >= w_lo - 1e-5).all() and (w <= w_hi + 1e-5).all())
        test = exps[0].test
        allowed = strategy.task_classes[0]
        z_lo, z_mid, z_hi = strategy.target_bounds(test.x, w_lo, w_hi)
        pred = z_mid.masked_fill(~allowed, -1e9).argmax(1)
        others_hi = z_hi.masked_fill(~allowed, -1e9).scatter(1, pred[:, None], -1e9).max(1).values
        certified = z_lo.gather(1, pred[:, None])[:, 0] > others_hi
        assert certified.float().mean() > 0.5, certified.float().mean()  # the interval is not vacuous
        samples = [w_lo, w_hi, *_uniform(w_lo, w_hi, 30, gen)]
        for w in samples:
            z = forward_point(strategy.layers, test.x, strategy.unflatten(w))
            assert bool((z >= z_lo - 1e-4).all() and (z <= z_hi + 1e-4).all())
            assert torch.equal(z.masked_fill(~allowed, -1e9).argmax(1)[certified], pred[certified])
        assert (pred == test.y).float().mean() > 0.9


def test_universal_embedding_lies_in_every_box(make_cfg):
    """With ``universal=True`` the boxes share a region; the one network generated from its centre has
    weights inside every task's weight box, so it answers certified inputs of every task like that task."""
    cfg = make_cfg(
        *DIGITS,
        "strategy.universal=true",
        "strategy.custom_init=true",
        "strategy.beta=0.5",
        "strategy.inference=universal",
        "strategy.epsilon=5",
        "strategy.kappa_decay=5e-5",
        "strategy.lr=0.01",
    )
    stream, strategy = build(cfg)
    exps = stream.learn_experiences[:3]
    _learn(strategy, cfg, exps)
    assert int(strategy.universal_empty_dims) == 0
    u = strategy.universal_weights
    with torch.no_grad():
        for key in ["0", "1", "2"]:
            w_lo, w_hi = (w[0] for w in strategy.weight_box(*strategy.embedding_box([key], strategy.epsilon)))
            assert bool((u >= w_lo - 1e-5).all() and (u <= w_hi + 1e-5).all()), key
    accs = [float((strategy(e.test.x, e.test.task).argmax(1) == e.test.y).float().mean()) for e in exps]
    assert min(accs) > 0.8, accs


def test_near_zero_forgetting_and_resume_with_embeddings(make_cfg, monkeypatch):
    cfg = make_cfg(*DIGITS)
    ckpt = crash_at(monkeypatch, HyperInterval, 2, cfg)
    assert ckpt["extra"]["tasks"] == ["0", "1"] and {"centres.1", "radii.1", "universal_weights"} <= set(ckpt["model"])
    resumed = run(make_cfg(f"resume={cfg.run_dir}"))
    full = run(make_cfg(*DIGITS))
    assert resumed["accuracy_matrix"] == full["accuracy_matrix"]
    R = np.asarray(full["accuracy_matrix"])
    assert full["metrics"]["cl/forgetting"] < 0.02 and R[-1].mean() > 0.95, R


def test_rejects_target_networks_without_interval_rules():
    from clframe.errors import ConfigError
    from clframe.registry import BACKBONES, load_plugins

    load_plugins()
    cnn = BACKBONES.build({"name": "cnn", "channels": [4], "batch_norm": True}, input_shape=(1, 8, 8))
    with pytest.raises(ConfigError, match="backbone"):
        HyperInterval(cnn, 10, setting="task")
    plain = BACKBONES.build({"name": "cnn", "channels": [4, 8], "batch_norm": False}, input_shape=(1, 8, 8))
    s = HyperInterval(plain, 10, setting="task", hnet_hidden=(8,))
    x = torch.rand(3, 1, 8, 8)
    flat = torch.randn(s.n_weights) * 0.1
    lo, hi = ibp(s.layers, x, x, s.unflatten(flat), s.unflatten(flat))
    assert torch.allclose(lo, forward_point(s.layers, x, s.unflatten(flat)), atol=1e-5) and torch.allclose(
        lo, hi, atol=1e-5
    )
    assert isinstance(s.layers[-1], nn.Linear)
