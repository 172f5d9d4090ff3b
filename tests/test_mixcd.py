"""mix-cd: the group rates and sampling weights on a hand-made memory, collateral-damage samples rehearsed more
than under uniform replay, the same compute budget (and memory) as replay, the same loss as replay, forget
requests purge samples with their statistics, exact resume, and runs on a causal-LM stream and a vision stream."""

from __future__ import annotations

import torch

from clframe.backbones.simple import MLP
from clframe.data import load_dataset
from clframe.fit import Engine
from clframe.registry import SCENARIOS, load_plugins
from clframe.runner import learn_experience, run, start_event
from clframe.strategies.mixcd import CollateralDamageMemory, MixCD
from clframe.strategies.replay import Replay
from clframe.strategy import Strategy
from clframe.stream import Experience, TensorData
from tests.conftest import BLOBS, crash_at
from tests.test_language_models import TINY, TINY_SCENARIO, _model

load_plugins()


def _data(n: int, offset: int = 0) -> TensorData:
    return TensorData(torch.randn(n, 3), torch.zeros(n, dtype=torch.long), torch.arange(offset, offset + n),
                      torch.zeros(n, dtype=torch.long))  # fmt: skip


def _memory(uniform_mix=0.2, decay=1.0) -> CollateralDamageMemory:
    """10 samples: 8 right under the prior model (losses 0.1 .. 0.8), 2 wrong (losses 5, 6); two loss bins."""
    mem = CollateralDamageMemory(10, "reservoir", n_bins=2, uniform_mix=uniform_mix, decay=decay)
    right = torch.tensor([True] * 8 + [False] * 2)
    loss = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 5.0, 6.0])
    mem.add_observed(_data(10), torch.Generator().manual_seed(0), right, loss)
    return mem


def test_groups_rates_and_weights_on_a_hand_made_memory():
    mem = _memory()
    assert mem.extra["group"].tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 2, 2]  # loss median 0.45; prior-wrong last
    assert torch.equal(mem.rates(), torch.zeros(3)) and torch.allclose(mem.weights(), torch.full((10,), 0.1))
    # rehearsed: 0 (group 0, now wrong: collateral damage), 1 (group 0, right), 4, 5 (group 1, right), 8 (prior-wrong)
    slot = torch.tensor([0, 1, 4, 5, 8])
    mem.observe(slot, torch.tensor([False, True, True, True, False]), torch.tensor([2.0, 0.1, 0.4, 0.5, 7.0]))
    assert torch.allclose(mem.rates(), torch.tensor([1 / 2, 0.0, 0.0]))
    # group 0 holds 4 x 0.5 = 2 expected CD samples of 2 in total: each gets 0.8 * 0.5 / 2 + 0.2 / 10
    expected = torch.tensor([0.22] * 4 + [0.02] * 6)
    assert torch.allclose(mem.weights(), expected) and abs(float(mem.weights().sum()) - 1) < 1e-6
    assert mem.extra["right"][0].item() is False and mem.extra["loss"][0].item() == 2.0  # last observation kept
    assert mem.extra["prior_right"][0].item() is True  # the prior model's verdict stays for the stage
    # decay: counts are discounted by `decay` at every step before the new step's counts are added
    mem2 = _memory(decay=0.5)
    mem2.observe(slot, torch.tensor([False, True, True, True, False]), torch.zeros(5))
    mem2.observe(torch.tensor([2, 3]), torch.tensor([True, True]), torch.zeros(2))
    assert torch.allclose(mem2.rates()[0], torch.tensor((0.5 * 1) / (0.5 * 2 + 2)))
    # next stage: the last observations become the prior model's (sample 0 is now prior-wrong, never CD)
    mem.add_observed(_data(0, 100), torch.Generator().manual_seed(0), torch.zeros(0, dtype=torch.bool), torch.zeros(0))
    assert mem.extra["prior_right"][0].item() is False and mem.extra["group"][0].item() == 2
    assert torch.equal(mem.seen, torch.zeros(3))
    # by_class: the loss groups per class (group = bin + (n_bins + 1) * class)
    by_class = CollateralDamageMemory(10, "reservoir", n_bins=2, uniform_mix=0.2, decay=1.0, by_class=True)
    data = _data(10)
    data.y[5:] = 1
    by_class.add_observed(data, torch.Generator().manual_seed(0), torch.tensor([True] * 8 + [False] * 2),
                          torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 5.0, 6.0]))  # fmt: skip
    assert by_class.extra["group"].tolist() == [0, 0, 0, 0, 1, 4, 4, 4, 5, 5] and len(by_class.cd) == 6


def _blobs(i: int, classes: list[int]) -> Experience:
    train, test = load_dataset("blobs")
    pick = lambda d: d.subset(torch.isin(d.y, torch.tensor(classes)))  # noqa: E731
    return Experience(i, "learn", pick(train), pick(test), classes)


def _strategy(cls, **kw):
    torch.manual_seed(0)
    return cls(MLP((1, 4, 4), hidden=(16,)), 10, batch_size=16, buffer_size=40, replay_batch_size=8, **kw)


def test_collateral_damage_samples_are_rehearsed_more_often_than_under_uniform_replay():
    """Learn classes 0, 1 (memory samples right under the prior model), then break class 0 (its logit pushed
    down): its memory samples become collateral damage. mix-cd with groups per class (by_class) finds them from
    its training passes alone and draws them ~ (1 - u) + u / 2 of the time (u = uniform_mix = 0.2); uniform
    replay about half of the time."""
    share = {}
    for cls in (MixCD, Replay):
        s = _strategy(cls, lr=0.1, **({"by_class": True} if cls is MixCD else {}))
        first, second = _blobs(0, [0, 1]), _blobs(1, [2, 3])
        start_event(s, 0, first)
        learn_experience(Engine({"engine": "fabric", "max_epochs": 5}, "none"), s, first)
        with torch.no_grad():
            s.head.bias[0] = -1e3  # every class-0 sample is wrong from now on
        s.before_experience(second)
        drawn = []
        for _ in range(5):  # no optimiser step: the forward passes of training only
            for batch in s.train_dataloader_for(second):
                s.training_loss(batch)
                drawn.append(batch["replay"]["y"])
        share[cls.__name__] = float((torch.cat(drawn) == 0).float().mean())
        if cls is MixCD:
            prior_right = s.buffer.extra["prior_right"][s.buffer.data.y == 0]
            assert prior_right.float().mean() > 0.8, "class 0 was not learned: the test would be void"
    assert 0.35 < share["Replay"] < 0.65, share
    assert share["MixCD"] > 0.8 and share["MixCD"] > share["Replay"] + 0.25, share


def test_same_loss_as_replay_on_a_classifier_and_on_a_language_model():
    exp = _blobs(0, [0, 1, 2])
    m, r = _strategy(MixCD), _strategy(Replay)
    for s in (m, r):
        s.before_experience(exp)
    batch = {"x": exp.train.x[:6], "y": exp.train.y[:6], "task": exp.train.task[:6], "ids": exp.train.ids[:6]}
    batch["replay"] = {k: batch[k][:3] for k in ("x", "y", "task", "ids")}
    assert torch.allclose(m.training_loss(batch), r.training_loss(batch), atol=1e-6)
    # language model: the token-mean NLL of the joined batch, as replay's (itself cross-checked with Hugging Face)
    text = SCENARIOS.build(TINY_SCENARIO, seed=0)
    data = text.learn_experiences[-1].train
    b = {"x": data.x[:4], "y": data.y[:4], "task": data.task[:4]}
    b["replay"] = {"x": data.x[4:7], "y": data.y[4:7], "task": data.task[4:7], "ids": data.ids[4:7]}
    lm = {name: _model(text, name) for name in ("mixcd", "replay")}
    assert torch.allclose(*(s.training_loss(b) for s in lm.values()), atol=1e-5)
    # the verdicts mix-cd takes from the training logits are Strategy.correct's (argmax = label; LM: exact match)
    exp_lm = text.learn_experiences[-1]
    for s, e in ((m, exp), (lm["mixcd"], exp_lm)):
        s.before_experience(e)
        n = min(8, len(e.train))
        s.training_loss({"x": e.train.x[:n], "y": e.train.y[:n], "task": e.train.task[:n], "ids": e.train.ids[:n]})
        assert torch.equal(s._last[2][:n], s.correct(e.train.x[:n], e.train.y[:n], e.train.task[:n]))


def _count_training_samples(monkeypatch) -> dict[str, list[int]]:
    """Stream and memory samples through every training step, per strategy class."""
    counts: dict[str, list[int]] = {}
    original = Strategy.training_step

    def counting(self, batch, batch_idx):
        c = counts.setdefault(type(self).__name__, [0, 0])
        c[0] += len(batch["y"])
        c[1] += len(batch["replay"]["y"]) if "replay" in batch else 0
        return original(self, batch, batch_idx)

    monkeypatch.setattr(Strategy, "training_step", counting)
    return counts


def test_the_compute_budget_and_the_memory_are_uniform_replays(make_cfg, monkeypatch):
    counts = _count_training_samples(monkeypatch)
    same = (*BLOBS, "strategy.buffer_size=30", "strategy.replay_batch_size=4", "scenario.n_experiences=2")
    runs = {s: make_cfg(*same, f"strategy={s}") for s in ("mixcd", "replay")}
    for cfg in runs.values():
        assert run(cfg)["status"] == "complete"
    assert counts["MixCD"] == counts["Replay"] and counts["MixCD"][1] > 0, counts
    ckpt = {s: torch.load(f"{c.run_dir}/checkpoints/last.pt", weights_only=True)["extra"] for s, c in runs.items()}
    assert ckpt["mixcd"]["rehearsed"] == counts["MixCD"][1]
    ids = {s: c["stores"]["buffer"]["data"]["ids"] for s, c in ckpt.items()}
    assert torch.equal(ids["mixcd"], ids["replay"])  # the same samples in memory: only the draws differ


def test_a_forget_request_purges_the_samples_and_their_statistics(make_cfg):
    mem = _memory()
    mem.observe(torch.tensor([0, 4]), torch.tensor([False, True]), torch.zeros(2))
    before = dict(zip(mem.data.ids.tolist(), mem.extra["group"].tolist()))
    assert mem.forget(torch.tensor([1, 4, 9])) == 3
    kept = mem.data.ids.tolist()
    assert kept == [0, 2, 3, 5, 6, 7, 8] and all(len(v) == len(kept) for v in mem.extra.values())
    assert mem.extra["group"].tolist() == [before[i] for i in kept]  # each statistic stays with its sample
    assert torch.equal(mem.seen, torch.zeros(3))  # the group rates restart
    # in a run: the forgotten classes leave the memory with their per-sample statistics (the runner verifies)
    res = run(make_cfg("scenario=unlearning_digits", "scenario.base.dataset=blobs", "backbone.hidden=[16]",
                       "strategy=mixcd", "strategy.buffer_size=60", "strategy.batch_size=64", "trainer.max_epochs=1",
                       "unlearning=ga", "unlearning.steps=2"))  # fmt: skip
    assert res["status"] == "complete" and res["forget_requests"][0]["purged"]["buffer"] > 0
    assert "group rates" in res["forget_requests"][0]["derived_state"]


def test_a_killed_run_resumes_exactly(make_cfg, monkeypatch):
    overrides = (*BLOBS, "strategy=mixcd", "strategy.buffer_size=30", "strategy.replay_batch_size=4",
                 "scenario.n_experiences=2", "trainer.max_epochs=2")  # fmt: skip
    cfg = make_cfg(*overrides)
    crash_at(monkeypatch, MixCD, 1, cfg)  # killed before the second experience: resumed with its memory
    resumed = run(make_cfg(*overrides, f"resume={cfg.run_dir}"))
    straight = make_cfg(*overrides)
    assert run(straight)["rows"] == resumed["rows"]
    a, b = (torch.load(f"{c}/checkpoints/last.pt", weights_only=True) for c in (cfg.run_dir, straight.run_dir))
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert a["extra"]["rehearsed"] == b["extra"]["rehearsed"] > 0
    sa, sb = a["extra"]["stores"]["buffer"], b["extra"]["stores"]["buffer"]
    assert all(torch.equal(sa["extra"][k], sb["extra"][k]) for k in sa["extra"]) and torch.equal(sa["cd"], sb["cd"])


def test_runs_on_a_causal_lm_stream_and_a_vision_stream(make_cfg):
    small_lm = ("backbone.hidden_size=32", "backbone.layers=1", "backbone.heads=2", "trainer.max_epochs=2")
    lm = make_cfg(*TINY, *small_lm, "strategy=mixcd", "scenario.forget=0", "scenario.stages=2",
                  "strategy.buffer_size=40", "strategy.replay_batch_size=4")  # fmt: skip
    vision = make_cfg("scenario=split_digits", "scenario.n_experiences=2", "backbone.hidden=[32]", "strategy=mixcd",
                      "trainer.max_epochs=2", "strategy.replay_batch_size=8")  # fmt: skip
    for cfg in (lm, vision):
        res = run(cfg)
        assert res["status"] == "complete", res.get("error")
        extra = torch.load(f"{cfg.run_dir}/checkpoints/last.pt", weights_only=True)["extra"]
        mem = extra["stores"]["buffer"]
        assert extra["rehearsed"] > 0 and len(mem["extra"]["group"]) == len(mem["data"]["ids"]) > 0
    # digits are learned in 2 epochs: the prior model got memory samples right (candidates for collateral damage)
    assert mem["extra"]["prior_right"].float().mean() > 0.3 and res["accuracy_matrix"][0][0] > 0.7
