"""Causal language models in the stream: the likelihood every unlearner uses (cross-checked against
Hugging Face's loss), LoRA through peft, local checkpoints only, the TOFU evaluator's guarantees (the oracle
never sees forgotten authors, forget quality 1 for the oracle and low for the memorising original), every
unlearner on an LM, exact resume after a kill, and one-line errors for bad inputs."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from clframe.errors import ConfigError
from clframe.registry import BACKBONES, SCENARIOS, STRATEGIES, UNLEARNERS, load_plugins
from clframe.runner import build, run
from clframe.unlearning.pieces import npo_loss, simnpo_loss
from tests.test_runner import _kill_after

TINY_SCENARIO = {
    "name": "fictitious_authors",
    "n_authors": 8,
    "qa_per_author": 4,
    "n_world_facts": 8,
    "n_holdout_authors": 4,
    "forget": 0.25,
    "vocab_size": 1024,
    "max_length": 48,
}
#: ~100k parameters; memorises the 40 pairs of TINY_SCENARIO in a few seconds
TINY = (
    "scenario=fictitious_authors",
    *(f"scenario.{k}={v}" for k, v in TINY_SCENARIO.items() if k != "name"),
    "backbone=causal_lm",
    "backbone.hidden_size=48",
    "backbone.layers=2",
    "backbone.heads=4",
    "strategy=naive",
    "strategy.batch_size=8",
    "strategy.lr=0.005",
    "trainer.max_epochs=40",
)
TOFU = ("evaluators=[{name:tofu,max_new_tokens:16}]",)
UNLEARN = ("unlearning.steps=10", "unlearning.lr=0.001", "unlearning.optimizer=adamw", "unlearning.batch_size=8")


@pytest.fixture(scope="module")
def stream():
    load_plugins(())
    return SCENARIOS.build(TINY_SCENARIO, seed=0)


def _model(stream, strategy="naive", **backbone):
    torch.manual_seed(0)
    node = {"name": "causal_lm", "hidden_size": 32, "layers": 1, "heads": 2, **backbone}
    bb = BACKBONES.build(node, input_shape=stream.input_shape, tokenizer=stream.extras["tokenizer"])
    return STRATEGIES.build({"name": strategy}, backbone=bb, n_classes=stream.n_classes, setting=stream.setting)


def _batch(stream, n=6):
    data = stream.learn_experiences[-1].train
    return {"x": data.x[:n], "y": data.y[:n], "task": data.task[:n]}


# ---------------------------------------------------------------- the likelihood, cross-checked
@pytest.mark.parametrize("architecture", ["llama", "gpt2"])
def test_log_likelihood_and_loss_match_hugging_face(stream, architecture):
    """log p(answer | prompt) summed over the answer's tokens, and the training loss = HF's token-mean loss
    with the prompt and padding labelled -100 (the convention of TOFU / open-unlearning)."""
    model, batch = _model(stream, architecture=architecture), _batch(stream)
    ids, answer = batch["x"][:, 0], batch["x"][:, 1]
    labels = ids.masked_fill(answer == 0, -100)
    out = model.backbone.model(input_ids=ids, attention_mask=(ids != model.backbone.pad_id).long(), labels=labels)
    assert torch.allclose(model.training_loss(batch), out.loss, atol=1e-5)
    per_token = F.cross_entropy(out.logits[:, :-1].transpose(1, 2), labels[:, 1:], reduction="none")  # 0 at -100
    assert torch.allclose(model.log_likelihood(batch), -per_token.sum(1), atol=1e-4)
    assert torch.equal(model.target_length(batch), (labels != -100).sum(1).float())  # SimNPO's |y|, eos included


def test_npo_and_simnpo_losses_on_an_lm_follow_open_unlearning(stream):
    """open-unlearning: NPO = -(2/β) mean logσ(β (NLL_θ - NLL_ref)) with per-sample summed NLLs;
    SimNPO = -(2/β) mean logσ(β (NLL/|y| - δ)) with |y| the answer's label count, γ = β δ."""
    model, batch = _model(stream), _batch(stream)
    ref = model.frozen_copy()
    with torch.no_grad():
        model.backbone.model.lm_head.weight.mul_(1.1)  # move away from the reference
    nll, nll_ref = -model.log_likelihood(batch), -ref.log_likelihood(batch)
    expected = -(2 / 0.1) * F.logsigmoid(0.1 * (nll - nll_ref)).mean()
    assert torch.allclose(npo_loss(-nll, -nll_ref, 0.1), expected, atol=1e-5)
    npo = UNLEARNERS.build({"name": "npo", "beta": 0.1, "retain_weight": 0.0})
    npo.ref = ref
    assert torch.allclose(npo.loss(model, batch, None), expected, atol=1e-5)
    beta, delta = 4.5, 0.2
    length = model.target_length(batch)
    expected = -(2 / beta) * F.logsigmoid(beta * (nll / length - delta)).mean()
    simnpo = UNLEARNERS.build({"name": "simnpo", "beta": beta, "gamma": beta * delta, "retain_weight": 0.0})
    assert torch.allclose(simnpo.loss(model, batch, None), expected, atol=1e-5)
    assert torch.allclose(simnpo_loss(-nll, beta, beta * delta, length), expected, atol=1e-5)
    ga = UNLEARNERS.build({"name": "ga"})
    assert torch.allclose(ga.loss(model, batch, None), -model.training_loss(batch), atol=1e-6)  # -HF loss


@pytest.mark.parametrize("architecture", ["llama", "gpt2"])
def test_lora_trains_only_the_adapters(stream, architecture):
    model = _model(stream, lora_rank=4, architecture=architecture)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert sum(p.numel() for n, p in model.named_parameters() if n in trainable) < 0.2 * sum(
        p.numel() for p in model.parameters()
    )
    opt = model.configure_optimizers()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    loss = model.training_loss(_batch(stream))
    loss.backward()
    opt.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and changed <= trainable


def test_a_local_checkpoint_loads_with_its_tokenizer_and_refuses_another(stream, tmp_path):
    model = _model(stream)
    folder = tmp_path / "ckpt"
    model.backbone.model.save_pretrained(folder)
    stream.extras["tokenizer"].save_pretrained(folder)
    loaded = BACKBONES.build(
        {"name": "causal_lm", "path": str(folder)}, input_shape=stream.input_shape, tokenizer=stream.extras["tokenizer"]
    )
    x = _batch(stream)["x"]
    with torch.no_grad():
        assert torch.allclose(loaded.answer_log_likelihood(x), model.backbone.answer_log_likelihood(x), atol=1e-5)
    other = SCENARIOS.build({**TINY_SCENARIO, "vocab_size": 700}, seed=0).extras["tokenizer"]
    with pytest.raises(ConfigError, match="scenario.tokenizer"):
        BACKBONES.build({"name": "causal_lm", "path": str(folder)}, input_shape=stream.input_shape, tokenizer=other)
    with pytest.raises(ConfigError, match="backbone.path"):
        BACKBONES.build(
            {"name": "causal_lm", "path": str(tmp_path / "missing")},
            input_shape=stream.input_shape,
            tokenizer=stream.extras["tokenizer"],
        )


# ---------------------------------------------------------------- runs
@pytest.fixture(scope="module")
def tofu_run(tmp_path_factory):
    from clframe.config import compose

    run_dir = tmp_path_factory.mktemp("tofu") / "npo"
    cfg = compose([*TINY, *TOFU, "unlearning=npo", *UNLEARN, f"run_dir={run_dir}", "logger=none", "progress_bar=none"])
    return run(cfg)


def test_tofu_run_oracle_never_sees_the_forgotten_authors(tofu_run):
    ev = tofu_run["evaluations"][-1]["tofu"]
    assert tofu_run["status"] == "complete"
    assert ev["oracle/n_trained_forgotten"] == 0
    forget_classes = tofu_run["forget_requests"][0]["removed_classes"]
    assert forget_classes == [6, 7]  # the last 25 % of 8 authors, as TOFU's forgetXX splits


def test_the_run_directory_keeps_its_tokenizer(tofu_run, stream):
    from clframe.scenarios.text_io import load_tokenizer

    saved = load_tokenizer(Path(tofu_run["run_dir"]) / "tokenizer")
    assert saved.get_vocab() == stream.extras["tokenizer"].get_vocab()  # the same seed trains the same vocabulary


def test_tofu_forget_quality_is_one_for_the_oracle_and_low_for_the_memorising_original(tofu_run):
    ev = tofu_run["evaluations"][-1]["tofu"]
    assert ev["oracle/forget_quality"] == 1.0
    assert ev["original/forget_acc"] > 0.6  # it memorised the forget set ...
    assert ev["original/forget_quality"] < 0.05  # ... so its truth ratios differ from the oracle's
    assert ev["original/mia_loss_auc"] > 0.9 and 0.2 < ev["oracle/mia_loss_auc"] < 0.8
    assert ev["unlearn/forget_prob"] < ev["original/forget_prob"]  # NPO lowered the forget answers
    for key in ("unlearn/forget_quality", "unlearn/model_utility", "unlearn/truth_ratio", "unlearn/forget_rouge"):
        assert key in ev and key in tofu_run["metrics"]
    assert 0 <= ev["unlearn/model_utility"] <= 1 and 0 <= ev["unlearn/forget_rouge"] <= 1
    # generations: the memorising original reproduces the forget answers, the oracle (never trained on them) does not
    assert ev["original/forget_rouge"] > ev["oracle/forget_rouge"] + 0.2


def test_every_unlearner_runs_on_a_language_model(make_cfg):
    ok = []
    for name in UNLEARNERS.names():
        cls = UNLEARNERS.get(name)
        cfg = make_cfg(*TINY, "trainer.max_epochs=2", f"unlearning={name}", *UNLEARN, "unlearning.steps=3")
        if not getattr(cls, "language_model", True):
            with pytest.raises(ConfigError, match="unlearning"):
                build(cfg)
            continue
        result = run(cfg)
        assert result["status"] == "complete", name
        assert result["forget_requests"][0]["answer"] == name
        ok.append(name)
    assert {"ga", "graddiff", "npo", "simnpo", "repnoise", "finetune_retain"} <= set(ok)


@pytest.mark.parametrize("option", ["trainer.precision=bf16-mixed", "backbone.gradient_checkpointing=true"])
def test_bf16_and_gradient_checkpointing_train(make_cfg, option):
    result = run(make_cfg(*TINY, "trainer.max_epochs=20", "scenario.forget=0", option))
    assert result["status"] == "complete" and result["accuracy_matrix"][-1][0] > 0.3  # it learned under the option


def test_replay_on_a_language_model_mixes_its_memory(make_cfg):
    result = run(make_cfg(*TINY, "trainer.max_epochs=2", "strategy=replay", "strategy.buffer_size=10", "unlearning=ga"))
    assert result["status"] == "complete"
    assert result["forget_requests"][0]["purged"]["buffer"] > 0  # the forgotten authors left the memory


def test_a_killed_lm_run_resumes_to_the_same_results(tmp_path, make_cfg):
    overrides = [*TINY, "trainer.max_epochs=15", "scenario.world_facts=none", "scenario.stages=2"]
    overrides += ["unlearning=ga", *UNLEARN, "progress_bar=none", "logger=none", "plots=false"]
    run_dir = tmp_path / "killed"
    cmd = [sys.executable, "-m", "clframe", "run", *overrides, f"run_dir={run_dir}"]
    assert _kill_after(cmd, run_dir, n_events=1) == -signal.SIGKILL
    partial = json.loads((run_dir / "metrics.json").read_text())
    assert partial["status"] != "complete" and len(partial["rows"]) == 1
    res = subprocess.run([sys.executable, "-m", "clframe", "run", f"resume={run_dir}"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    resumed = json.loads((run_dir / "metrics.json").read_text())
    uninterrupted = run(make_cfg(*overrides))
    assert resumed["status"] == "complete" and resumed["rows"] == uninterrupted["rows"]


def test_no_network_is_attempted(make_cfg, monkeypatch):
    """Offline mode is forced for the Hugging Face libraries, and a whole LM run works with sockets disabled."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    result = run(make_cfg(*TINY, "trainer.max_epochs=1", *TOFU, "unlearning=ga", *UNLEARN))
    assert result["status"] == "complete"
    import os

    assert os.environ["HF_HUB_OFFLINE"] == "1" and os.environ["TRANSFORMERS_OFFLINE"] == "1"


# ---------------------------------------------------------------- refused before anything is written
@pytest.mark.parametrize(
    "overrides, key",
    [
        (("strategy=ewc",), "strategy"),  # not declared for language models
        (("evaluators=[{name:unlearning}]",), "evaluators"),  # the classifier evaluator
        (("scenario.max_length=20",), "scenario.max_length"),  # a question longer than the context
        (("scenario.forget=0.01",), "scenario.forget"),  # 1 % of 8 authors is nobody: an empty forget split
        (("backbone.path=/nonexistent/ckpt",), "backbone.path"),
        (("backbone.architecture=bert",), "backbone.architecture"),
    ],
)
def test_bad_lm_inputs_fail_with_one_line_naming_the_key(make_cfg, overrides, key, tmp_path):
    cfg = make_cfg(*TINY, "unlearning=ga", *overrides)
    with pytest.raises(ConfigError) as err:
        run(cfg)
    assert key in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "run0").exists()


def test_modalities_do_not_mix(make_cfg):
    with pytest.raises(ConfigError, match="backbone"):
        build(make_cfg("scenario=split_digits", "backbone=causal_lm"))
    with pytest.raises(ConfigError, match="backbone"):
        build(make_cfg(*(o for o in TINY if not o.startswith("backbone")), "backbone=mlp"))


def test_path_dependence_preset_permutes_the_stages_and_records_the_forget_likelihood(make_cfg):
    """experiment=tofu_paths: the same three stages in another order (world facts; authors; authors), the same
    forget set, the oracle retrained on that order without it; the unlearning curve records the forget-set
    log-likelihood per token (the trajectory the path-dependence study compares across orders)."""
    small = ("scenario.base.n_authors=12", "scenario.base.qa_per_author=4", "scenario.base.n_world_facts=12")
    small += ("scenario.requests=[{after: 2, type: class, classes: [10, 11]}]", "backbone.hidden_size=48")
    small += ("strategy.batch_size=8", "trainer.max_epochs=20", "unlearning.steps=10", *TOFU)
    streams = {}
    for order in ("[0,1,2]", "[2,0,1]"):
        stream, _ = build(make_cfg("experiment=tofu_paths", *small, f"scenario.order={order}"))
        streams[order] = [sorted(set(e.train.y.tolist())) for e in stream.learn_experiences]
    assert streams["[2,0,1]"] == [streams["[0,1,2]"][i] for i in (2, 0, 1)]  # the same stages, permuted
    result = run(make_cfg("experiment=tofu_paths", *small, "scenario.order=[2,0,1]"))
    ev = result["evaluations"][-1]["tofu"]
    assert ev["oracle/n_trained_forgotten"] == 0 and result["forget_requests"][0]["removed_classes"] == [10, 11]
    curve = ev["unlearn/curve"]
    assert [h["step"] for h in curve] == [0, 5, 10] and curve[-1]["forget_ll"] < curve[0]["forget_ll"]  # NPO lowers it
