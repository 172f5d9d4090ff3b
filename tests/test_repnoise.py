"""RepNoise (unlearning/repnoise.py): the authors' MMD against an independent numpy/scipy computation,
the whole loss against a hand computation on a tiny MLP, the per-layer ascent's gradient path, row
alignment for task-routed strategies, and forgetting with depth on a small digits stream."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.spatial.distance import cdist

from clframe.backbones.simple import MLP
from clframe.registry import UNLEARNERS
from clframe.strategy import Strategy
from clframe.stream import Experience, TensorData
from clframe.unlearning.pieces import repnoise_mmd
from clframe.unlearning.repnoise import RepNoise, pool_per_sample

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def numpy_mmd(x: np.ndarray, y: np.ndarray, mul: float = 2.0, num: int = 5) -> float:
    """Straight from the definition: pairwise squared distances of the pooled sample, bandwidth =
    mean over distinct pairs, kernels at bandwidth * mul**(i - num // 2), biased block means."""
    z = np.concatenate([x, y]).astype(np.float64)
    d2 = cdist(z, z, "sqeuclidean")
    n_all = len(z)
    base = d2.sum() / (n_all * n_all - n_all)
    k = sum(np.exp(-d2 / (base * mul ** (i - num // 2))) for i in range(num))
    n = len(x)
    return k[:n, :n].mean() + k[n:, n:].mean() - 2 * k[:n, n:].mean()


def test_repnoise_mmd_matches_an_independent_computation():
    gen = torch.Generator().manual_seed(0)
    for n, m, d in ((8, 8, 5), (6, 11, 3), (16, 16, 40)):
        x = torch.randn(n, d, generator=gen, dtype=torch.float64) * 2 + 1
        y = torch.randn(m, d, generator=gen, dtype=torch.float64)
        assert float(repnoise_mmd(x, y)) == pytest.approx(numpy_mmd(x.numpy(), y.numpy()), rel=1e-9, abs=1e-12)
        assert float(repnoise_mmd(x, y, 3.0, 3)) == pytest.approx(numpy_mmd(x.numpy(), y.numpy(), 3.0, 3), rel=1e-9)
    # equal sizes: the authors' elementwise form mean(XX + YY - XY - YX)
    x, y = (
        torch.randn(10, 4, generator=gen, dtype=torch.float64),
        torch.randn(10, 4, generator=gen, dtype=torch.float64),
    )
    z = torch.cat([x, y]).numpy()
    d2 = cdist(z, z, "sqeuclidean")
    base = d2.sum() / (20 * 20 - 20) / 4
    k = sum(np.exp(-d2 / (base * 2**i)) for i in range(5))
    authors = np.mean(k[:10, :10] + k[10:, 10:] - k[:10, 10:] - k[10:, :10])
    assert float(repnoise_mmd(x, y)) == pytest.approx(authors, rel=1e-9)
    # a distribution compared with itself is ~0; far from the noise it is large
    assert float(repnoise_mmd(y, y)) == pytest.approx(0.0, abs=1e-12)
    assert float(repnoise_mmd(x + 10, y)) > 10 * float(repnoise_mmd(x, y))


def tiny_strategy(seed: int = 0) -> Strategy:
    torch.manual_seed(seed)
    s = Strategy(MLP((1, 2, 2), hidden=(5, 3)), 3)
    s.seen[:] = True
    return s.eval()


def tiny_exp(seed: int = 1) -> Experience:
    gen = torch.Generator().manual_seed(seed)
    forget = TensorData.from_tensors(torch.randn(6, 1, 2, 2, generator=gen), torch.tensor([0, 1, 2, 0, 1, 2]))
    retain = TensorData.from_tensors(torch.randn(9, 1, 2, 2, generator=gen), torch.arange(9) % 3)
    return Experience(0, "forget", None, None, [0, 1, 2], forget=forget, retain=retain)


def batch(data: TensorData) -> dict[str, torch.Tensor]:
    return {"x": data.x, "y": data.y, "task": data.task}


def prepared(strategy, exp, **kwargs) -> RepNoise:
    u = UNLEARNERS.build({"name": "repnoise", "steps": 0, **kwargs})
    u.ref = strategy.frozen_copy()
    u.setup(strategy, exp)
    return u


def test_loss_matches_a_hand_computation_on_a_tiny_mlp():
    s, exp = tiny_strategy(), tiny_exp()
    u = prepared(s, exp, ascent_weight=0.7, noise_weight=0.3, retain_weight=1.5)
    assert u.names == ["net.2", "net.4"] and set(u.readouts) == {"net.2", "net.4"}
    torch.manual_seed(123)
    got = u.terms(s, batch(exp.forget), batch(exp.retain))

    # by hand, in numpy float64, from the weights
    def np_(t):
        return t.detach().double().numpy()

    w1, b1, w2, b2 = (
        np_(p) for p in (s.backbone.net[1].weight, s.backbone.net[1].bias, *s.backbone.net[3].parameters())
    )
    wh, bh = np_(s.head.weight), np_(s.head.bias)

    def forward(x):
        a1 = x.reshape(len(x), -1) @ w1.T + b1
        h1 = np.maximum(a1, 0)
        a2 = h1 @ w2.T + b2
        h2 = np.maximum(a2, 0)
        return a1, h1, a2, h2, h2 @ wh.T + bh

    def ce(logits, y):
        logits = logits - logits.max(1, keepdims=True)
        logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
        return -logp[np.arange(len(y)), y].mean()

    xf, yf = np_(exp.forget.x), exp.forget.y.numpy()
    xr, yr = np_(exp.retain.x), exp.retain.y.numpy()
    a1, h1, a2, h2, out = forward(xf)
    layer_ce = []
    for name, h in (("net.2", h1), ("net.4", h2)):
        r = u.readouts[name]
        layer_ce.append(ce(((h - np_(r.mu)) / np_(r.sd)) @ np_(r.weight).T + np_(r.bias), yf))
    harmful = (ce(out, yf) + sum(layer_ce)) / 3
    torch.manual_seed(123)  # the same noise draws, in layer order
    noise = np.mean([numpy_mmd(a, torch.randn(a.shape).double().numpy()) for a in (a1, a2)])
    retain = ce(forward(xr)[-1], yr)
    loss = 1.5 * retain + 0.3 * noise - 0.7 * np.log(1 + harmful)

    assert [float(v) for v in got["layer_ce"]] == pytest.approx(layer_ce, rel=1e-5)
    assert float(got["harmful"]) == pytest.approx(harmful, rel=1e-5)
    assert float(got["noise"]) == pytest.approx(noise, rel=1e-4)
    assert float(got["retain"]) == pytest.approx(1.5 * retain, rel=1e-5)
    assert float(got["loss"]) == pytest.approx(loss, rel=1e-4)
    # the read-outs decode the frozen model's layers (fitted, not random): low CE at step 0
    assert max(layer_ce) < 0.9 * np.log(3)


def test_per_layer_ascent_reaches_each_layer_through_its_own_representation():
    s, exp = tiny_strategy(), tiny_exp()
    u = prepared(s, exp)
    terms = u.terms(s, batch(exp.forget), batch(exp.retain))
    first, second, head = s.backbone.net[1].weight, s.backbone.net[3].weight, s.head.weight
    g = torch.autograd.grad(terms["layer_ce"][0], [first, second, head], allow_unused=True, retain_graph=True)
    assert g[0] is not None and float(g[0].abs().sum()) > 0  # the first layer's read-out pulls the first layer
    assert g[1] is None and g[2] is None  # and nothing above it: the term is not the output loss again
    g = torch.autograd.grad(terms["layer_ce"][1], [first, second, head], allow_unused=True)
    assert float(g[0].abs().sum()) > 0 and float(g[1].abs().sum()) > 0 and g[2] is None
    # per_layer=false: no read-out term, the ascent is the output loss only
    flat = prepared(s, exp, per_layer=False).terms(s, batch(exp.forget), batch(exp.retain))
    assert flat["layer_ce"] == [] and float(flat["harmful"]) == pytest.approx(
        float(F.cross_entropy(s(exp.forget.x), exp.forget.y)), rel=1e-6
    )


class Routed(Strategy):
    """Runs the backbone once per task group, in reverse task order, and scatters the rows back (as CLR does)."""

    def forward(self, x, task=None):
        out = x.new_zeros(len(x), self.n_classes)
        for t in task.unique().flip(0).tolist():
            rows = task == t
            out[rows] = self.head(self.backbone.forward_features(x[rows])) * (1 + t)
        return out


def test_rows_stay_aligned_when_the_strategy_routes_task_groups():
    torch.manual_seed(0)
    s = Routed(MLP((1, 2, 2), hidden=(4,)), 3).eval()
    s.seen[:] = True
    gen = torch.Generator().manual_seed(2)
    b = {
        "x": torch.randn(7, 1, 2, 2, generator=gen),
        "y": torch.arange(7) % 3,
        "task": torch.tensor([1, 0, 1, 2, 0, 2, 1]),
    }
    u = UNLEARNERS.build({"name": "repnoise"})
    u.names = ["net.2"]
    logp, out, acts = u.forward_layers(s, b)
    pre, post = acts["net.2"]
    assert torch.equal(torch.sort(out["task"]).values, out["task"])  # regrouped by task
    assert torch.allclose(pre, s.backbone.net[1](out["x"].flatten(1)))  # row i is sample i of the returned batch
    assert torch.allclose(post, pre.relu()) and torch.allclose(logp, s.log_likelihood(out))


# ---------------------------------------------------------------- a small digits stream
@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """A replay MLP (2 x 64) that learned digits 0-3, and the class-1 forget request that follows."""
    from clframe.config import compose
    from clframe.fit import Engine
    from clframe.runner import build, learn_experience, start_event

    cfg = compose(
        [
            "scenario=unlearning_digits",
            "backbone=mlp",
            "backbone.hidden=[64,64]",
            "trainer.max_epochs=3",
            "strategy=replay",
            "strategy.buffer_size=200",
            "strategy.batch_size=32",
            "strategy.lr=0.05",
            "strategy.momentum=0.9",
            "+scenario.base.classes=[0,1,2,3]",
            "scenario.base.n_experiences=2",
            "scenario.requests=[{after: 1, type: class, classes: [1]}]",
            "unlearning=repnoise",
            f"run_dir={tmp_path_factory.mktemp('rn')}",
            "logger=none",
            "progress_bar=none",
        ]
    )
    stream, strategy = build(cfg)
    for exp in stream.experiences[:2]:
        start_event(strategy, 0, exp)
        learn_experience(Engine.from_config(cfg), strategy, exp)
    return strategy.cpu(), stream.experiences[2]


def _acc(model, data: TensorData) -> float:
    model.eval()
    with torch.no_grad():
        return float((model(data.x, data.task).argmax(1) == data.y).float().mean())


def test_repnoise_forgets_with_depth_on_digits(digits):
    """Measured (3 seeds, this config): forget accuracy 1.0 -> 0.0, retain 0.78-0.88 -> 0.87-0.96;
    the original model's first-layer read-out CE on the forget set 20-28 with the per-layer ascent,
    10-14 without it (per_layer=false)."""
    strategy, exp = digits
    before_forget, before_retain = _acc(strategy, exp.forget), _acc(strategy, exp.retain)
    assert before_forget > 0.95
    probe = prepared(strategy, exp, readout_steps=100)  # the original model's read-outs, to judge depth
    first_layer_ce = {}
    for per_layer in (True, False):
        model = copy.deepcopy(strategy)
        UNLEARNERS.build(
            {"name": "repnoise", "steps": 30, "lr": 0.01, "batch_size": 32, "eval_every": 0, "per_layer": per_layer}
        )(model, exp)
        forget_acc, retain_acc = _acc(model, exp.forget), _acc(model, exp.retain)
        assert forget_acc < 0.1, (per_layer, forget_acc)
        assert retain_acc > before_retain - 0.05, (per_layer, retain_acc, before_retain)
        model.eval()
        with torch.no_grad():
            _, b, acts = probe.forward_layers(model, batch(exp.forget))
            h = pool_per_sample(acts["net.2"][1])
            first_layer_ce[per_layer] = float(F.cross_entropy(probe.readouts["net.2"](h), b["y"]))
    assert first_layer_ce[True] > 1.3 * first_layer_ce[False], first_layer_ce
