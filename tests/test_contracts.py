"""The contracts every strategy × unlearner relies on, checked over the whole registry (no list to keep):
sample stores are purged and nothing forgotten is fed again, the oracle never sees the forget set, the
reference model is the model before unlearning, unsupported combinations fail before anything is written."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from clframe.errors import ConfigError
from clframe.fit import Engine
from clframe.registry import STRATEGIES, UNLEARNERS, load_plugins
from clframe.runner import build, run
from clframe.stores import DataStore, ForgetLeakError, WatchedLoader, held_forgotten, purge_and_verify
from clframe.strategy import SETTINGS
from clframe.stream import Experience, TensorData

load_plugins()
FAST = {
    "desire": ["strategy.consolidation_steps=3", "strategy.refine_epochs=1"]
}  # keys exist only for these strategies
# learn 0-1, learn 2-3, forget 30% of everything learned, learn 4-5 (blobs: milliseconds per step)
STREAM = (
    "scenario=unlearning_digits",
    "scenario.base.dataset=blobs",
    "scenario.base.n_experiences=3",
    "+scenario.base.classes=[0,1,2,3,4,5]",
    "scenario.requests=[{after: 1, type: fraction, fraction: 0.3}]",
    "backbone.hidden=[16]",
    "trainer.max_epochs=1",
    "strategy.batch_size=32",
)


def setting_of(name: str) -> str:
    return "class" if "class" in STRATEGIES.get(name).capabilities.settings else "task"


def pairs() -> list[tuple[str, str | None]]:
    """Every strategy with every unlearner it supports (``None``: strategies that answer exactly)."""
    out = []
    for name in STRATEGIES.names():
        caps = STRATEGIES.get(name).capabilities
        out += [(name, u) for u in UNLEARNERS.names()] if caps.gradient_unlearning else [(name, None)]
    return out


def overrides(name: str, unlearner: str | None) -> list[str]:
    extra = [f"unlearning={unlearner}", "unlearning.steps=3", "unlearning.eval_every=0"] if unlearner else []
    return [*STREAM, f"strategy={name}", f"scenario.base.setting={setting_of(name)}", *extra, *FAST.get(name, [])]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.mark.parametrize("name,unlearner", pairs())
def test_learn_forget_learn(make_cfg, monkeypatch, name, unlearner):
    """After the request no store holds a forgotten id, and no later batch (replayed ones included) carries one."""
    cfg = make_cfg(*overrides(name, unlearner))
    fed: dict[int, list[torch.Tensor]] = {}
    cls = STRATEGIES.get(name)
    original = cls.train_dataloader_for

    def recording(self, exp):
        loader = original(self, exp)
        return None if loader is None else WatchedLoader(loader, record=fed.setdefault(exp.id, []))

    monkeypatch.setattr(cls, "train_dataloader_for", recording)
    stores_after: dict[str, int] = {}
    purge = purge_and_verify

    def checking(strategy, exp, forgotten):
        report = purge(strategy, exp, forgotten)
        stores_after.update(held_forgotten(strategy, forgotten))
        stores_after["checked"] = 1
        return report

    monkeypatch.setattr("clframe.stores.purge_and_verify", checking)
    result = run(cfg)
    assert result["status"] == "complete"
    request = next(e for e in result["experiences"] if e["kind"] == "forget")
    assert stores_after == {"checked": 1}, stores_after
    stream, fresh = build(cfg)
    gone = stream.forgotten_until(request["id"])
    assert len(gone) > 10
    later = [ids for exp_id, parts in fed.items() if exp_id > request["id"] for ids in parts]
    if original(fresh, stream.experiences[0]) is not None:  # the strategy trains: it was fed the last experience
        assert later and not torch.isin(torch.cat(later), gone).any()
    report = result["forget_requests"][0]
    assert report["answer"] == (unlearner or "exact")
    assert set(report["purged"]) == set(fresh.sample_stores())  # every declared store was purged


@pytest.mark.parametrize("name", STRATEGIES.names())
def test_oracle_never_sees_the_forget_set(make_cfg, name):
    from clframe.runner import run_context
    from clframe.unlearning.oracle import train_oracle

    cfg = make_cfg(*overrides(name, None if name == "nmc" else "ga"))
    stream, _ = build(cfg)
    pos = next(e.id for e in stream.experiences if e.kind == "forget")
    _, info = train_oracle(run_context(cfg, stream), stream, pos)
    retained = torch.cat([e.train.ids for e in stream.experiences[:pos] if e.kind == "learn"])
    retained = retained[~torch.isin(retained, info["forgotten"])]
    assert not torch.isin(info["trained_ids"], info["forgotten"]).any()
    assert torch.isin(info["trained_ids"], retained).all()
    if name != "nmc":  # gradient-trained strategies were fed retained samples (NMC takes no gradient steps)
        assert len(info["trained_ids"]) > len(retained) // 2


class FirstLoss(UNLEARNERS.get("npo")):
    """NPO that records its loss at step 0 (before any update)."""

    def loss(self, strategy, forget, retain):
        value = super().loss(strategy, forget, retain)
        self.losses.append(float(value))
        return value


@pytest.mark.parametrize("name", [n for n in STRATEGIES.names() if STRATEGIES.get(n).capabilities.gradient_unlearning])
def test_npo_reference_is_the_model_before_unlearning(make_cfg, name):
    """At step 0 the model and its reference agree, so NPO's loss is its no-update value (2/β)·log 2 —
    for every strategy, on a CNN with BatchNorm (whose running statistics stay frozen) and on an MLP."""
    from clframe.runner import learn_experience, start_event

    beta, tried = 0.5, []
    for backbone in (["backbone=cnn", "backbone.channels=[4,8]"], ["backbone=mlp", "backbone.hidden=[32]"]):
        cfg = make_cfg(
            "scenario=split_digits",
            f"scenario.setting={setting_of(name)}",
            "scenario.n_experiences=2",
            *backbone,
            f"strategy={name}",
            "trainer.max_epochs=1",
            "strategy.batch_size=64",
            *FAST.get(name, []),
        )
        try:
            stream, strategy = build(cfg)
            for exp in stream.experiences:
                start_event(strategy, 0, exp)
                learn_experience(Engine.from_config(cfg), strategy, exp)
        except ConfigError as err:  # e.g. interval propagation or LoRA targets need plain Linear layers
            assert "backbone" in str(err) or "targets" in str(err), err
            continue
        data = TensorData.concat([e.train for e in stream.experiences])
        forget = data.subset(torch.arange(0, len(data), 7))
        request = Experience(9, "forget", None, None, forget.classes(), forget=forget, retain=None, name="f")
        npo = FirstLoss(steps=1, retain_weight=0.0, beta=beta, batch_size=64, eval_every=0, device="cpu")
        npo.losses = []
        running = {k: v.clone() for k, v in strategy.state_dict().items() if "running" in k}
        npo(strategy, request)
        assert npo.losses[0] == pytest.approx(2 / beta * math.log(2), abs=1e-5), backbone
        assert all(torch.equal(strategy.state_dict()[k], v) for k, v in running.items())  # BN statistics frozen
        tried.append(backbone[0])
    assert "backbone=mlp" in tried


def test_unsupported_settings_fail_before_anything_is_written(make_cfg, tmp_path):
    checked = 0
    for name in STRATEGIES.names():
        for setting in sorted(set(SETTINGS[:2]) - set(STRATEGIES.get(name).capabilities.settings)):
            cfg = make_cfg("scenario=split_blobs", f"scenario.setting={setting}", f"strategy={name}")
            with pytest.raises(ConfigError, match="scenario.setting='class'.*valid choices: task"):
                run(cfg)
            assert not Path(cfg.run_dir).exists()
            checked += 1
    assert checked >= 2  # clr and hyperinterval need task ids


def test_forget_requests_need_an_answer_and_nmc_refuses_gradients(make_cfg):
    cfg = make_cfg(*STREAM, "strategy=naive")  # a forget request, no unlearning method
    with pytest.raises(ConfigError, match="unlearning=None is invalid; valid choices: .*ga"):
        run(cfg)
    assert not Path(cfg.run_dir).exists()
    cfg = make_cfg(*STREAM, "strategy=nmc", "unlearning=ga")
    with pytest.raises(ConfigError, match="unlearning='ga' is invalid; valid choices: null"):
        run(cfg)
    assert not Path(cfg.run_dir).exists()


def test_an_undeclared_store_fails_loudly():
    """A strategy that keeps training data without declaring it cannot pass a forget request."""

    class Hoarder:
        pass

    from clframe.backbones.simple import MLP

    data = TensorData.from_tensors(torch.randn(6, 2), torch.tensor([0, 1, 0, 1, 0, 1]))

    strategy = STRATEGIES.get("naive")(MLP(input_shape=(2,), hidden=[4]), 2)
    strategy.hidden = Hoarder()
    strategy.hidden.kept = [data]  # undeclared, two levels down
    declared = strategy.register_store("declared", DataStore())
    declared.add(data)
    forget = data.subset(torch.tensor([1, 4]))
    request = Experience(1, "forget", None, None, forget.classes(), forget=forget, name="f")
    with pytest.raises(ForgetLeakError, match=r"strategy\.hidden\.kept\[0\] \(2\)"):
        purge_and_verify(strategy, request, forget.ids)
    assert len(declared) == 4  # the declared store was purged first


def test_watched_loader_stops_a_batch_with_a_forgotten_id():
    data = TensorData.from_tensors(torch.randn(8, 2), torch.zeros(8, dtype=torch.long))
    from clframe.stream import TensorLoader

    seen: list[torch.Tensor] = []
    assert len(list(WatchedLoader(TensorLoader(data, 4), torch.tensor([99]), seen))) == 2
    assert sorted(torch.cat(seen).tolist()) == list(range(8))
    with pytest.raises(ForgetLeakError, match="ids"):
        list(WatchedLoader(TensorLoader(data, 4), torch.tensor([3])))
