"""Long streams: permuted / rotated inputs computed on demand (memory flat in the number of
experiences, values unchanged) and separate EWC's penalties summed into one quadratic (same gradient
and loss, a state that does not grow)."""

from __future__ import annotations

import functools
import io

import pytest
import torch

from clframe.registry import SCENARIOS, load_plugins
from clframe.runner import build, run
from clframe.scenarios.streams import rotate
from clframe.strategies.ewc import EWC
from clframe.strategies.losses import weighted_drift
from clframe.stream import LazyRows, TensorData, TensorLoader
from tests.conftest import BLOBS, require_data

load_plugins()


def held_bytes(obj) -> int:
    """Bytes of the distinct tensor storages reachable from ``obj`` (experiences, data, lazy inputs)."""
    storages: dict[int, int] = {}

    def walk(o) -> None:
        if isinstance(o, torch.Tensor):
            storages[o.untyped_storage().data_ptr()] = o.untyped_storage().nbytes()
        elif isinstance(o, (list, tuple)):
            for v in o:
                walk(v)
        elif isinstance(o, dict):
            for v in o.values():
                walk(v)
        elif isinstance(o, functools.partial):
            walk(o.args), walk(o.keywords)
        elif hasattr(o, "__dict__"):
            walk(vars(o))

    walk(obj)
    return sum(storages.values())


def eval_pass(stream) -> None:
    """What the runner does after every event: every test set, in slices."""
    for exp in stream.experiences:
        for i in range(0, len(exp.test), 2048):
            exp.test.x[i : i + 2048]


@pytest.mark.parametrize("spec", [{"name": "permuted"}, {"name": "rotated", "cache_mb": 0}], ids=lambda s: s["name"])
def test_stream_memory_is_flat_in_the_number_of_experiences(spec):
    require_data("mnist")
    held = {}
    for n in (5, 50):
        stream = SCENARIOS.build({**spec, "n_experiences": n}, seed=0)
        eval_pass(stream)
        held[n] = held_bytes(stream.experiences)
    one_copy = 70_000 * 784 * 4  # one materialised experience (train + test inputs): ~220 MB
    per_exp = (held[50] - held[5]) / 45
    assert per_exp < 40_000, held  # indices and permutations only (rotated: 1,000 training row ids)
    assert per_exp < one_copy / 1000, held


def test_permuted_inputs_are_the_eagerly_permuted_ones():
    stream = SCENARIOS.build({"name": "permuted", "dataset": "digits", "n_experiences": 3}, seed=0)
    from clframe.data import load_dataset

    train, test = load_dataset("digits")
    gen = torch.Generator().manual_seed(0)
    perms = [torch.arange(64), torch.randperm(64, generator=gen), torch.randperm(64, generator=gen)]
    for exp, perm in zip(stream.experiences, perms):
        eager = train.x.reshape(len(train), -1)[:, perm].reshape(train.x.shape)
        assert isinstance(exp.train.x, LazyRows) and exp.train.x.shape == eager.shape
        assert torch.equal(exp.train.x[:], eager)
        idx, mask = torch.tensor([5, 0, 17, 5]), train.y == 3
        assert torch.equal(exp.train.x[idx], eager[idx]) and torch.equal(exp.train.x[3], eager[3])
        assert torch.equal(exp.train.subset(mask).x, eager[mask])
        batch = next(iter(TensorLoader(exp.train, 32, seed=1)))
        assert torch.equal(batch["x"], eager[batch["ids"]])
        both = TensorData.concat([exp.train, exp.test])  # a torch function sees the materialised tensor
        assert both.x.shape == (len(train) + len(test), 1, 8, 8) and torch.equal(both.x[: len(train)], eager)
        buf = io.BytesIO()  # stores holding stream data checkpoint plain tensors (weights_only loads them)
        torch.save({"x": exp.train.x}, buf)
        buf.seek(0)
        assert torch.equal(torch.load(buf, weights_only=True)["x"], eager)
    assert stream.experiences[1].train.task.unique().tolist() == [0]


def test_rotated_cache_keeps_what_fits_and_rotates_the_rest_per_batch():
    from clframe.data import load_dataset

    _, test = load_dataset("digits")
    one = len(test) * 64 * 4
    stream = SCENARIOS.build(
        {"name": "rotated", "dataset": "digits", "angles": [10, 50, 90], "train_per_experience": 100,
         "cache_mb": 1.5 * one / 2**20},
        seed=0,
    )  # fmt: skip
    eval_pass(stream)
    kept = [e.test.x._full is not None for e in stream.experiences]
    assert kept == [True, False, False]  # first come, first kept: the budget holds one test set
    for exp, deg in zip(stream.experiences, (10, 50, 90)):
        assert torch.equal(exp.test.x[:], rotate(test.x, deg))  # cached or not: the eager rotation
        assert torch.equal(exp.test.x[7:300], rotate(test.x, deg)[7:300])


def sum_of_penalties(module, anchors, lam):
    """The former separate-EWC penalty: one weighted drift per experience."""
    return 0.5 * lam * sum(weighted_drift(module, f, t) for f, t in anchors)


def test_merged_penalty_has_the_gradient_and_value_of_the_sum(make_cfg):
    _, ewc = build(make_cfg(*BLOBS, "strategy=ewc"))
    gen = torch.Generator().manual_seed(0)
    params = dict(ewc.named_parameters())
    anchors = []
    for k in range(6):
        fisher = {n: torch.rand(p.shape, generator=gen) ** 4 for n, p in params.items()}
        if k < 3:  # some entries never mattered (A = 0): no pull there
            fisher = {n: f * (torch.rand(f.shape, generator=gen) > 0.3) for n, f in fisher.items()}
        theta = {n: p.detach() + torch.randn(p.shape, generator=gen) for n, p in params.items()}
        anchors.append((fisher, theta))
        ewc.add_anchor(fisher, theta)
    assert len(ewc.anchors) == 1
    old = sum_of_penalties(ewc, anchors, ewc.lam)
    old_grad = torch.autograd.grad(old, list(params.values()))
    new = ewc.penalty()
    new_grad = torch.autograd.grad(new, list(params.values()))
    torch.testing.assert_close(float(new), float(old), rtol=1e-5, atol=0)  # the offset C keeps the value
    for g_new, g_old in zip(new_grad, old_grad):
        torch.testing.assert_close(g_new, g_old, rtol=1e-5, atol=1e-5)
    assert float(old) > 1.0
    _, legacy = build(make_cfg(*BLOBS, "strategy=ewc"))  # a checkpoint from before: one pair per experience
    legacy.load_checkpoint_state({"anchors": [{"fisher": f, "theta": t} for f, t in anchors]})
    legacy.load_state_dict(ewc.state_dict())
    torch.testing.assert_close(float(legacy.penalty()), float(old), rtol=1e-5, atol=0)
    ewc.after_forget(None)  # every anchor moves to the unlearned weights: the sum of F_k (theta - theta_u)^2
    unlearned = {n: p.detach().clone() for n, p in params.items()}
    assert float(ewc.penalty()) == 0.0
    with torch.no_grad():
        for p in params.values():
            p.add_(torch.randn(p.shape, generator=gen))
    moved = sum_of_penalties(ewc, [(f, unlearned) for f, _ in anchors], ewc.lam)
    torch.testing.assert_close(float(ewc.penalty()), float(moved), rtol=1e-5, atol=0)


def test_separate_ewc_accuracy_matrix_equals_the_sum_of_penalties(make_cfg, monkeypatch):
    overrides = (*BLOBS, "strategy=ewc", "strategy.lam=10")
    new = run(make_cfg(*overrides))["accuracy_matrix"]
    monkeypatch.setattr(EWC, "add_anchor", lambda self, fisher, theta: self.anchors.append((fisher, theta)))
    monkeypatch.setattr(EWC, "penalty", lambda self: sum_of_penalties(self, self.anchors, self.lam))
    old = run(make_cfg(*overrides))["accuracy_matrix"]
    assert len(new) == 5 and torch.allclose(torch.tensor(new), torch.tensor(old), atol=1e-6, rtol=0)


def state_bytes(strategy) -> int:
    buf = io.BytesIO()
    torch.save(strategy.checkpoint_state(), buf)
    return len(buf.getvalue())


def test_separate_ewc_state_does_not_grow_with_the_number_of_experiences(make_cfg):
    stream, ewc = build(make_cfg(*BLOBS, "strategy=ewc"))
    exp = stream.experiences[0]
    sizes = []
    for _ in range(12):
        with torch.no_grad():
            for p in ewc.parameters():
                p.add_(0.01)  # a new anchor each time
        ewc.after_experience(exp)
        sizes.append(state_bytes(ewc))
    assert len(ewc.anchors) == 1 and ewc.offset > 0
    assert max(sizes[1:]) - min(sizes[1:]) < 64, sizes  # the float offset only
    _, resumed = build(make_cfg(*BLOBS, "strategy=ewc"))
    resumed.restore_checkpoint_state(ewc.checkpoint_state())
    resumed.load_state_dict(ewc.state_dict())
    assert float(resumed.penalty()) == float(ewc.penalty()) and resumed.offset == ewc.offset
