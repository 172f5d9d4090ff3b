"""The scaling law of forgetting (Kalajdzievski 2024): the fit recovers known parameters and honest standard
errors from noisy synthetic data, bad inputs fail with a clear message, the lm_loss evaluator's cross-entropy is
Hugging Face's loss, the lm_corpus stream trains exactly the planned steps, and the fitting command reads run
directories as JSON only."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from clframe.errors import ConfigError
from clframe.metrics.lm_eval import LMLossEvaluator, token_losses, token_mean_ce
from clframe.metrics.scaling import fit_forgetting_law, fit_linear_relation, power_law
from clframe.registry import BACKBONES, SCENARIOS, STRATEGIES, load_plugins

ROOT = Path(__file__).resolve().parent.parent
TRUE = {"A": 0.05, "alpha": 0.3, "beta": 0.5, "E": -0.1}
P_GRID, N_GRID = [3e3, 6e3, 1.2e4, 2.4e4], [25, 50, 100, 200, 400]
SMALL = {"name": "lm_corpus", "steps": [2, 5], "batch_size": 4, "n_people": 6, "n_towns": 3, "n_dishes": 6,
         "n_base_docs": 40, "n_finetune_docs": 40, "n_heldout": 12, "n_test": 4}  # fmt: skip


def synthetic(noise: float, seed: int = 0):
    P, N = np.meshgrid(P_GRID, N_GRID, indexing="ij")
    P, N = P.ravel(), N.ravel()
    t = TRUE
    F = power_law(P, N, t["A"], t["alpha"] * t["beta"], t["beta"], t["E"])
    return P, N, F + np.random.default_rng(seed).normal(0, noise, len(F))


# ---------------------------------------------------------------- the fit
def test_the_fit_recovers_known_parameters_and_predicts_held_out_steps():
    noise = 0.005
    P, N, F = synthetic(noise)
    fit = fit_forgetting_law(P, N, F, holdout=N == 400)
    for key, value in TRUE.items():  # within 4 standard errors of the truth, and the errors are small
        assert abs(fit.params[key] - value) < 4 * fit.stderr[key], (key, fit.params[key], fit.stderr[key])
        assert fit.stderr[key] < 0.2 * abs(value), key
    assert fit.params["exponent_P"] == pytest.approx(fit.params["alpha"] * fit.params["beta"])
    assert fit.n_fit == 16 and fit.n_holdout == 4
    assert fit.rmse < 1.5 * noise and fit.r2 > 0.999  # the noise level, not more
    assert fit.holdout_rmse < 4 * noise  # extrapolation to twice the steps
    noiseless = fit_forgetting_law(*synthetic(0.0))
    for key, value in TRUE.items():
        assert noiseless.params[key] == pytest.approx(value, rel=1e-4), key


def test_standard_errors_match_the_spread_over_noise_draws():
    """The reported standard errors are what repeating the experiment with new noise would show."""
    draws = [fit_forgetting_law(*synthetic(0.01, seed)) for seed in range(40)]
    for key in ("beta", "exponent_P", "E"):
        spread = np.std([d.params[key] for d in draws], ddof=1)
        reported = np.median([d.stderr[key] for d in draws])
        assert 0.6 < reported / spread < 1.6, (key, reported, spread)


def test_the_loss_forgetting_line_matches_an_independent_computation():
    rng = np.random.default_rng(1)
    x = rng.uniform(2, 5, 30)
    y = -1.7 * x + 2.0 + rng.normal(0, 0.1, 30)
    rel = fit_linear_relation(x, y)
    slope, intercept = np.polyfit(x, y, 1)
    assert rel["slope"] == pytest.approx(slope) and rel["intercept"] == pytest.approx(intercept)
    assert rel["c"] == pytest.approx(-slope) and rel["s"] == pytest.approx(intercept)
    assert rel["r"] == pytest.approx(np.corrcoef(x, y)[0, 1])
    residual = y - (slope * x + intercept)  # textbook OLS standard error of the slope
    se = np.sqrt(residual @ residual / (len(x) - 2) / np.sum((x - x.mean()) ** 2))
    assert rel["slope_stderr"] == pytest.approx(se)
    assert rel["p_value"] < 1e-10 and rel["spearman_rho"] < -0.9


@pytest.mark.parametrize(
    "args,kwargs,message",
    [
        (([1, 2, 3, 4, 5], [1, 2, 3, 4, 5], [1, 2, 3, 4]), {}, "same length"),
        (([1, 2, 3, 4, 5], [1, 2, 3, 4, 5], [1, 2, float("nan"), 4, 5]), {}, "F has non-finite values"),
        (([1, 2, 0, 4, 5], [1, 2, 3, 4, 5], [1, 2, 3, 4, 5]), {}, "P must be positive"),
        (([1, 2, 3, 4], [1, 2, 3, 4], [1, 2, 3, 4]), {}, "at least 5 points"),
        (([2, 2, 2, 2, 2], [1, 2, 3, 4, 5], [1, 2, 3, 4, 5]), {}, "P takes one value only"),
        (([1, 2, 3, 4, 5], [1, 2, 3, 4, 5], [1, 1, 1, 1, 1]), {}, "F is constant"),
        (([1, 2, 3, 4, 5, 6], [1, 2, 3, 4, 5, 6], [1, 2, 3, 4, 5, 6]), {"holdout": [1, 1, 0, 0, 0, 0]}, "5 points"),
        (([1, 2, 3, 4, 5], [1, 2, 3, 4, 5], [1, 2, 3, 4, 5]), {"holdout": [1, 0]}, "boolean mask of length 5"),
        ((["a", 2, 3, 4, 5], [1, 2, 3, 4, 5], [1, 2, 3, 4, 5]), {}, "P must be a sequence of numbers"),
    ],
)
def test_bad_input_fails_with_a_clear_message(args, kwargs, message):
    with pytest.raises(ValueError, match=message):
        fit_forgetting_law(*args, **kwargs)


def test_the_line_refuses_bad_input():
    with pytest.raises(ValueError, match="at least 3 points"):
        fit_linear_relation([1, 2], [1, 2])
    with pytest.raises(ValueError, match="x is constant"):
        fit_linear_relation([1, 1, 1], [1, 2, 3])


# ---------------------------------------------------------------- the stream and the evaluator
@pytest.fixture(scope="module")
def stream():
    load_plugins(())
    return SCENARIOS.build(SMALL, seed=0)


def _model(stream, **backbone):
    torch.manual_seed(0)
    node = {"name": "causal_lm", "hidden_size": 16, "layers": 1, "heads": 2, **backbone}
    bb = BACKBONES.build(node, input_shape=stream.input_shape, tokenizer=stream.extras["tokenizer"])
    return STRATEGIES.build({"name": "naive"}, backbone=bb, n_classes=stream.n_classes, setting=stream.setting)


def test_the_stream_plans_its_steps_and_holds_out_unseen_documents(stream):
    learn = stream.learn_experiences
    assert [len(e.train) for e in learn] == [2 * 4, 3 * 4]  # (steps[k] - steps[k-1]) * batch_size documents
    tok = stream.extras["tokenizer"]
    text = lambda data: {tok.decode(r[0][r[1].bool()].tolist()) for r in data.x}  # noqa: E731
    assert not text(stream.extras["text_sets"]["finetune"]) & text(learn[0].train)
    again = SCENARIOS.build({**SMALL, "train": "base"}, seed=3)  # another run seed: the same corpora
    assert torch.equal(again.extras["text_sets"]["base"].x, stream.extras["text_sets"]["base"].x)
    x = learn[0].train.x
    assert torch.equal(x[:, 1, 1:], (x[:, 0, 1:] != tok.pad_token_id).long())  # loss on every token after bos
    with pytest.raises(ConfigError, match="scenario.steps"):
        SCENARIOS.build({**SMALL, "steps": [5, 2]}, seed=0)
    with pytest.raises(ConfigError, match="scenario.train"):
        SCENARIOS.build({**SMALL, "train": "wiki"}, seed=0)


def test_evaluator_cross_entropy_is_hugging_faces_loss(stream):
    """Pooled over the set (batches of unequal size), the token-mean CE equals ``outputs.loss`` on the whole set
    as one batch; the CE to a reference model is its entropy plus the KL (computed here with torch's kl_div)."""
    model, other = _model(stream), _model(stream, hidden_size=32)
    x = stream.extras["text_sets"]["base"].x
    ids, mask = x[:, 0], x[:, 1]
    with torch.no_grad():
        out = model.backbone.model(
            input_ids=ids, attention_mask=(ids != 0).long(), labels=ids.masked_fill(mask == 0, -100)
        )
        assert token_mean_ce(model, x, torch.device("cpu"), batch_size=5) == pytest.approx(float(out.loss), abs=1e-5)
        sums = token_losses(model, x, torch.device("cpu"), reference=other, batch_size=5)
        logq = out.logits[:, :-1].log_softmax(-1)
        logp = other.backbone.model(input_ids=ids, attention_mask=(ids != 0).long()).logits[:, :-1].log_softmax(-1)
        m = mask[:, 1:].float()
        kl = (F.kl_div(logq, logp, log_target=True, reduction="none").sum(-1) * m).sum() / m.sum()
        assert (sums["ce_ref"] - sums["entropy_ref"]) / sums["tokens"] == pytest.approx(float(kl), abs=1e-5)
        same = token_losses(model, x, torch.device("cpu"), reference=model)
        assert same["ce_ref"] == pytest.approx(same["entropy_ref"], rel=1e-5)  # KL(p || p) = 0


def test_a_lora_run_measures_forgetting_from_the_checkpoint_it_started_from(stream, tmp_path, make_cfg):
    """experiment=lora_scaling_tiny on a saved checkpoint: the initial CE is the checkpoint's (computed here
    independently), forgetting = CE - initial CE, the steps are cumulative and P counts the adapters only."""
    base = tmp_path / "base"
    model = _model(stream, hidden_size=16, intermediate_size=32)
    model.backbone.model.save_pretrained(base)
    stream.extras["tokenizer"].save_pretrained(base)
    small = [f"scenario.{k}={v}" for k, v in SMALL.items() if k not in ("name", "batch_size")]
    cfg = make_cfg("experiment=lora_scaling_tiny", f"backbone.path={base}", "backbone.lora_rank=2",
                   "strategy.batch_size=4", *[s.replace(" ", "") for s in small])  # fmt: skip
    assert cfg.scenario.tokenizer == str(base) and cfg.scenario.batch_size == 4
    from clframe.runner import run

    result = run(cfg)
    evals = [e["lm_loss"] for e in result["evaluations"]]
    assert [e["step"] for e in evals] == [2, 5] and result["optimizer_steps"] == 5
    lora = sum(p.numel() for n, p in _model(stream, hidden_size=16, intermediate_size=32, lora_rank=2,
                                              lora_targets=list(cfg.backbone.lora_targets)).named_parameters()
               if "lora_" in n)  # fmt: skip
    assert all(e["trainable_params"] == lora and e["lora_rank"] == 2 for e in evals)
    initial = token_mean_ce(model, stream.extras["text_sets"]["base"].x, torch.device("cpu"))
    for e in evals:
        assert e["base/ce_initial"] == pytest.approx(initial, abs=1e-5)
        assert e["base/forgetting"] == pytest.approx(e["base/ce"] - initial, abs=1e-9)
        assert e["base/kl_to_initial"] >= -1e-6
    assert evals[-1]["finetune/ce"] < evals[-1]["finetune/ce_initial"]  # the fine-tuning corpus is being learned
    assert result["metrics"]["lm/base/forgetting"] == pytest.approx(evals[-1]["base/forgetting"])


def test_unknown_sets_are_refused_with_the_known_ones(stream):
    with pytest.raises(ConfigError, match=r"evaluators.lm_loss.sets=\['wiki'\] is invalid; valid choices: .*base"):
        LMLossEvaluator(sets=["wiki"])._sets(stream)
    assert list(LMLossEvaluator()._sets(stream)) == ["base", "finetune"]  # default: every text set
    with pytest.raises(ConfigError, match="evaluators.lm_loss.sets"):
        LMLossEvaluator(sets="base")


# ---------------------------------------------------------------- the command on run directories
def _fake_run(folder: Path, rank: int, points: list[tuple[float, float, float]]) -> None:
    folder.mkdir(parents=True)
    evals = [{"lm_loss": {"step": n, "trainable_params": 100 * rank, "lora_rank": rank, "base/forgetting": f,
                          "finetune/ce": 3 - f / 2}} for n, f, _ in points]  # fmt: skip
    rows = [{"id": i, "kind": "learn", "name": f"e{i}"} for i in range(len(points))]
    (folder / "metrics.json").write_text(json.dumps({"status": "complete", "seed": 0, "evaluations": evals,
                                                     "row_events": rows}))  # fmt: skip


def test_the_command_fits_run_directories_and_skips_bad_ones(tmp_path):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from forgetting_law import main

    sweep = tmp_path / "sweep"
    for rank in (1, 2, 4, 8):
        pts = [(n, float(power_law(100 * rank, n, 0.05, 0.15, 0.5, -0.1)), 0) for n in N_GRID]
        _fake_run(sweep / f"rank{rank}", rank, pts)
    (sweep / "broken").mkdir()
    broken = {"step": "__import__('os')", "trainable_params": 1, "base/forgetting": 0.1, "finetune/ce": 1.0}
    (sweep / "broken" / "metrics.json").write_text(json.dumps({"evaluations": [{"lm_loss": broken}]}))
    (sweep / "pickle").mkdir()
    (sweep / "pickle" / "metrics.json").write_bytes(b"\x80\x04K\x01.")  # a pickle, never unpickled
    out = tmp_path / "fit"
    payload = main([str(sweep), "--out", str(out)])
    assert len(payload["points"]) == 20 and len(payload["skipped"]) == 2
    assert any("not a finite number" in s for s in payload["skipped"]) and any("JSON" in s for s in payload["skipped"])
    law = payload["law"]
    assert law["params"]["beta"] == pytest.approx(0.5, rel=1e-3) and law["params"]["exponent_P"] == pytest.approx(0.15)
    assert law["n_holdout"] == 4 and law["holdout_rmse"] < 1e-6  # each run's last step, predicted
    assert payload["relation"]["c"] == pytest.approx(2.0) and payload["relation"]["s"] == pytest.approx(6.0)
    assert {p.name for p in out.iterdir()} >= {
        "forgetting_law.md", "forgetting_law.json", "forgetting_vs_steps.png", "forgetting_vs_ft_loss.png"
    }  # fmt: skip
    assert "alpha*beta (exponent of P)" in (out / "forgetting_law.md").read_text()
    with pytest.raises(SystemExit, match="no run with lm_loss"):
        main([str(sweep / "broken"), "--out", str(out)])
