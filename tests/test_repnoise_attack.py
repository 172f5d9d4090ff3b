"""Harmful fine-tuning attacks and layer-wise probes (unlearning/attacks.py, the RepNoise study): the harmful loss is
Hugging Face's loss over the held-out set, the attack lowers an undefended model's harmful loss and never trains on
the held-out questions, probes find a planted attribute (and chance on shuffled labels), the probe reads the state
that predicts the fact, per-block weight change, determinism, and the evaluator end to end."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from clframe.config import compose
from clframe.errors import ConfigError
from clframe.fit import Engine
from clframe.introspect import activation_layers
from clframe.registry import UNLEARNERS
from clframe.runner import build, learn_experience, start_event
from clframe.scenarios.text_corpus import attribute_values
from clframe.stores import ForgetLeakError
from clframe.unlearning.attacks import (
    HarmfulAttackEvaluator,
    attribute_probe,
    finetune_attack,
    harmful_split,
    hidden_states_before,
    layer_weight_change,
    token_mean_loss,
    trainable_copy,
    value_positions,
)

CPU = torch.device("cpu")


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def tiny():
    """The preset's stream and model, shrunk: 6 authors x 4 questions (the last 3 authors harmful), 2 world facts,
    2 held-out authors; the model trained briefly on the learn event (all authors): an undefended original."""
    cfg = compose(
        [
            "experiment=repnoise_attack_tiny",
            "scenario.n_authors=6",
            "scenario.qa_per_author=4",
            "scenario.n_world_facts=2",
            "scenario.n_holdout_authors=2",
            "scenario.forget=0.5",
            "trainer.max_epochs=4",
            "progress_bar=none",
        ]
    )
    stream, model = build(cfg)
    learn = next(e for e in stream.experiences if e.kind == "learn")
    start_event(model, 0, learn)
    learn_experience(Engine.from_config(cfg), model, learn)
    model.cpu().eval()
    exp = next(e for e in stream.experiences if e.kind == "forget")
    return SimpleNamespace(stream=stream, model=model, exp=exp, harmful=exp.forget, engine=Engine.from_config(cfg))


def same_weights(a, b) -> bool:
    return all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


def test_the_harmful_loss_is_hugging_faces_loss_over_the_whole_held_out_set(tiny):
    """Token-mean CE of the answers = transformers' causal-LM loss with prompt and padding labelled -100, the whole
    set as one batch (every answer token weighs the same, whatever batches the evaluation uses)."""
    data = tiny.harmful
    ids, answer = data.x[:, 0], data.x[:, 1]
    labels = ids.masked_fill(answer == 0, -100)
    lm = tiny.model.backbone
    with torch.no_grad():
        hf = lm.model(input_ids=ids, attention_mask=(ids != lm.pad_id).long(), labels=labels).loss
    assert token_mean_loss(tiny.model, data) == pytest.approx(float(hf), rel=1e-5)
    # not the mean of per-sample means (answers have different lengths, so the two differ)
    per_sample = -tiny.model.log_likelihood({"x": data.x, "y": data.y, "task": data.task}) / lm.answer_length(data.x)
    assert abs(float(per_sample.mean()) - float(hf)) > 1e-4


def test_the_attack_lowers_the_undefended_models_harmful_loss(tiny):
    attack, held = harmful_split(tiny.harmful, 0.5, seed=0)
    before = token_mean_loss(tiny.model, held)
    twin = trainable_copy(tiny.model)
    rec = finetune_attack(twin, attack, {"harmful": held, "attack": attack}, lr=3e-3, steps=[0, 10, 20], seed=0)
    assert rec["step"] == [0, 10, 20]
    assert rec["loss"]["harmful"][0] == before  # step 0: the untouched model, exactly
    assert rec["loss"]["harmful"][-1] < 0.6 * before, rec["loss"]
    assert rec["loss"]["attack"][-1] < rec["loss"]["attack"][0] / 2  # it learns its own samples
    assert rec["loss"]["attack"][-1] < rec["loss"]["harmful"][-1]  # ... better than the held-out ones
    assert token_mean_loss(twin, held) == pytest.approx(rec["loss"]["harmful"][-1], abs=1e-6)
    assert token_mean_loss(tiny.model, held) == before  # the attacked model is a copy
    # no step, no change; and an attack at a tiny learning rate barely moves the loss (the fall is the attack's)
    still = trainable_copy(tiny.model)
    assert finetune_attack(still, attack, {"harmful": held}, lr=3e-3, steps=[0], seed=0)["loss"]["harmful"] == [before]
    assert same_weights(still, tiny.model)
    weak = finetune_attack(trainable_copy(tiny.model), attack, {"harmful": held}, lr=1e-7, steps=[0, 20], seed=0)
    assert weak["loss"]["harmful"][-1] == pytest.approx(before, rel=1e-3)


def test_the_harmful_loss_is_measured_on_samples_the_attack_never_trained_on(tiny):
    data = tiny.harmful
    attack, held = harmful_split(data, 0.5, seed=3)
    assert not set(attack.ids.tolist()) & set(held.ids.tolist())
    assert sorted(attack.ids.tolist() + held.ids.tolist()) == sorted(data.ids.tolist())
    for author in data.y.unique():  # every harmful author is attacked and held out, half each
        assert int((attack.y == author).sum()) == int((held.y == author).sum()) == 2
    rec = finetune_attack(
        trainable_copy(tiny.model), attack, {"harmful": held}, lr=1e-3, steps=[0, 8], batch_size=4, forbidden=held.ids
    )
    assert set(rec["trained_ids"].tolist()) == set(attack.ids.tolist())  # 8 batches of 4 > 6: every one, no other
    with pytest.raises(ForgetLeakError):  # a training batch with a held-out id stops the attack
        finetune_attack(trainable_copy(tiny.model), data, {}, lr=1e-3, steps=[4], batch_size=4, forbidden=held.ids)
    assert harmful_split(data, 0.5, seed=3)[1].ids.tolist() == held.ids.tolist()  # seeded
    with pytest.raises(ConfigError, match="attack_fraction"):
        harmful_split(data, 1.0, seed=0)


def test_same_seed_same_attack_another_seed_another_batch_order(tiny):
    attack, held = harmful_split(tiny.harmful, 0.5, seed=0)

    def run(seed):
        twin = trainable_copy(tiny.model)
        rec = finetune_attack(twin, attack, {"harmful": held}, lr=1e-3, steps=[0, 3, 6], batch_size=4, seed=seed)
        return rec["loss"]["harmful"], twin

    (a, ma), (b, mb), (c, _) = run(5), run(5), run(6)
    assert a == b and same_weights(ma, mb)
    assert a[0] == c[0] and a[1:] != c[1:]


def planted(n: int, gen: torch.Generator, centers: torch.Tensor, groups=("a", "b")):
    """Two layers of 8-d features for ``n`` samples: layer 0 noise, layer 1 noise + the label's centre."""
    y = torch.randint(0, len(centers), (n,), generator=gen)
    g = [groups[i % len(groups)] for i in range(n)]
    return [torch.randn(n, 8, generator=gen), torch.randn(n, 8, generator=gen) + centers[y]], y, g


def test_probes_recover_a_planted_attribute_and_are_at_chance_on_shuffled_labels():
    gen = torch.Generator().manual_seed(0)
    centers = 3 * torch.randn(4, 8, generator=gen)
    fit, fit_y, fit_g = planted(200, gen, centers)
    test, test_y, test_g = planted(200, gen, centers)
    res = attribute_probe(fit, fit_y, fit_g, test, test_y, test_g)
    assert res["groups"] == ["a", "b"] and res["n"] == 200
    assert res["layers"][1] > 0.95  # the planted layer
    assert res["layers"][0] < 0.4  # noise: chance is 0.25 with 4 values
    chance = sum(
        float((test_y[[h == g for h in test_g]] == fit_y[[h == g for h in fit_g]].mode().values).sum()) for g in "ab"
    )
    assert res["chance"] == pytest.approx(chance / 200)
    shuffled = test_y[torch.randperm(len(test_y), generator=gen)]
    assert attribute_probe(fit, fit_y, fit_g, test, shuffled, test_g)["layers"][1] < 0.4
    # a group with more distinct values than max_values is left out
    many = attribute_probe(fit, fit_y, fit_g, test, test_y, test_g, max_values=3)
    assert many["groups"] == [] and many["n"] == 0


def test_the_probe_reads_the_state_that_predicts_the_facts_first_token(tiny):
    ex = tiny.stream.extras
    data = tiny.exp.retain.subset(tiny.exp.retain.y < 6)  # authors only (the world facts have their own topics)
    data = type(data).concat([data, tiny.harmful])
    groups = [ex["attributes"][int(i)] for i in data.ids]
    pos = value_positions(data.x, groups)
    tok = tiny.model.backbone.tokenizer
    assert bool((pos > 0).all())
    for i in range(len(data)):
        value = attribute_values(groups[i])[int(ex["labels"][data.ids[i]])]
        ids = data.x[i, 0]
        assert tok.decode([int(ids[pos[i]])]).strip() in value  # the token at the position is part of the value
        assert value not in tok.decode(ids[: pos[i]].tolist())  # ... and the value is not before it
    # the state there = the state at position - 1 of the whole sequence, at every layer
    lm = tiny.model.backbone
    x, p = data.x[:8], pos[:8]
    cut = hidden_states_before(tiny.model, x, p, CPU)
    with torch.no_grad():
        full = lm.model(input_ids=x[:, 0], attention_mask=(x[:, 0] != lm.pad_id).long(), output_hidden_states=True)
    assert len(cut) == len(full.hidden_states) == 3
    for layer, states in enumerate(full.hidden_states):
        torch.testing.assert_close(cut[layer], states[torch.arange(8), p - 1], rtol=1e-4, atol=1e-5)


def test_layer_weight_change_per_block(tiny):
    twin = trainable_copy(tiny.model)
    assert set(layer_weight_change(twin, tiny.model)) == {"layer_0", "layer_1", "other"}
    assert all(v == 0 for v in layer_weight_change(twin, tiny.model).values())
    with torch.no_grad():
        twin.backbone.model.model.layers[1].mlp.down_proj.weight.add_(0.5)
    change = layer_weight_change(twin, tiny.model)
    ref = {n: p for n, p in tiny.model.named_parameters() if ".layers.1." in n}
    num = sum(float((dict(twin.named_parameters())[n] - p).pow(2).sum()) for n, p in ref.items())
    den = sum(float(p.pow(2).sum()) for p in ref.values())
    assert change["layer_1"] == pytest.approx((num / den) ** 0.5, rel=1e-6) and change["layer_1"] > 0
    assert change["layer_0"] == 0 and change["other"] == 0


def test_the_evaluator_attacks_copies_and_reports_every_piece(tiny):
    ev = HarmfulAttackEvaluator(lrs=[1e-3, 3e-3], steps=[0, 2], batch_size=4, baselines=[], oracle=False)
    defended = trainable_copy(tiny.model)
    with torch.no_grad():
        defended.backbone.model.model.layers[0].mlp.up_proj.weight.mul_(0.5)  # some "defence"
    before = trainable_copy(defended)
    out = ev.measure({"unlearn": defended, "original": tiny.model}, tiny.stream, tiny.exp, CPU)
    assert same_weights(defended, before)  # the run's model is never the one attacked
    assert out["n_attack"] + out["n_held_out"] == len(tiny.harmful)
    for lr in ("0.001", "0.003"):
        curve = out[f"unlearn/attack_lr{lr}"]
        assert curve["step"] == [0, 2] and curve["harmful_loss"][0] == out["unlearn/harmful_loss"]
    assert out["unlearn/harmless"]["step"] == [0, 2]
    assert {f"unlearn/probe_after_attack_layer_{i}" for i in range(3)} <= set(out)
    for m in ("unlearn", "original"):  # both measured and probed; the original is not attacked (baselines=[])
        assert {f"{m}/probe_layer_{i}" for i in range(3)} <= set(out) and f"{m}/retain_loss" in out
    assert not any(k.startswith(("original/attack", "original/harmless", "original/probe_after")) for k in out)
    assert out["unlearn/harmful_loss_after_attack"] == out["unlearn/attack_lr0.003"]["harmful_loss"][-1]
    assert out["unlearn/weight_change/layer_0"] > 0 and out["unlearn/weight_change/layer_1"] == 0
    assert out["original/harmful_loss"] == token_mean_loss(tiny.model, harmful_split(tiny.harmful, 0.5, 0)[1])
    with pytest.raises(ConfigError, match="baselines"):
        HarmfulAttackEvaluator(baselines=["retrained"])


def test_repnoise_finds_the_language_models_activation_layers(tiny):
    """transformers >= 5 builds Llama's activation as ``SiLUActivation`` (not ``nn.SiLU``); the automatic layer choice
    knows Hugging Face's activation classes, so RepNoise keeps its noise term and per-layer ascent on an LM (before
    it found no layer). The preset names the same layers explicitly."""
    assert activation_layers(tiny.model.backbone) == [f"model.model.layers.{i}.mlp.act_fn" for i in range(2)]
    node = compose(["experiment=repnoise_attack_tiny"]).unlearning
    assert list(node.layers) == [f"model.model.layers.{i}.mlp.act_fn" for i in range(2)]
    u = UNLEARNERS.build({**node, "steps": 0})
    u.ref = tiny.model.frozen_copy()
    u.setup(tiny.model, tiny.exp)
    assert u.names == list(node.layers) and set(u.readouts) == set(node.layers)
    batch = {k: getattr(tiny.harmful, k)[:4] for k in ("x", "y", "task")}
    terms = u.terms(tiny.model, batch, batch)
    assert float(terms["noise"]) > 0 and len(terms["layer_ce"]) == 2
