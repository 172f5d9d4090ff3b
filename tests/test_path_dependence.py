"""The path-dependence study ("On the Impossibility of Retrain Equivalence in Machine Unlearning"): stages that
differ in task (answer format) as well as data, the same stages in every order with the same forget set, an oracle
per order that never saw it, and the one driver both modalities share (benchmarks/path_dependence.py)."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from clframe.errors import ConfigError
from clframe.registry import SCENARIOS, load_plugins
from clframe.runner import run
from clframe.scenarios.text_corpus import ANSWER_FORMATS, attribute_values, fictitious_authors, in_format
from clframe.unlearning.oracle import oracle_experiences

ROOT = Path(__file__).resolve().parent.parent
ORDERS = ["".join(map(str, p)) for p in itertools.permutations(range(3))]
#: tofu_paths shrunk: 12 authors (stages 0-5, 6-11), 4 questions each, 12 world facts; forget authors 10, 11
SMALL_LM = (
    "scenario.base.n_authors=12",
    "scenario.base.qa_per_author=4",
    "scenario.base.n_world_facts=12",
    "scenario.base.n_holdout_authors=2",
    "scenario.requests=[{after: 2, type: class, classes: [10, 11]}]",
)


@pytest.fixture
def driver(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import path_dependence

    return path_dependence


# ------------------------------------------------------------------------------------------------ answer formats


def test_answer_formats_restate_the_same_fact_deterministically_and_distinctly():
    corpus = fictitious_authors(n_authors=6, qa_per_author=20, n_world_facts=30, n_holdout_authors=2, seed=3)
    qas = corpus.qa + corpus.world_facts + corpus.holdout
    again = fictitious_authors(n_authors=6, qa_per_author=20, n_world_facts=30, n_holdout_authors=2, seed=3)
    assert [in_format(q, "short") for q in again.qa] == [in_format(q, "short") for q in corpus.qa]
    assert [in_format(q, "sentence") for q in qas] == qas  # the generated (TOFU-style) corpus as it is
    by_format = {f: [in_format(q, f) for q in qas] for f in ANSWER_FORMATS}
    for a, b in itertools.combinations(ANSWER_FORMATS, 2):  # every QA reads differently in every format
        assert all(x.question != y.question and x.answer != y.answer for x, y in zip(by_format[a], by_format[b]))
    for q, short, record in zip(qas, by_format["short"], by_format["record"]):
        values = attribute_values(q.attribute)
        true, wrong = values[q.label], [values[w] for w in q.wrong_labels]
        assert (short.label, short.group, short.attribute) == (q.label, q.group, q.attribute)  # same fact
        assert short.question == "Answer briefly. " + q.question and short.answer == true
        assert short.paraphrased_answer == f"It is {true}." and short.perturbed_answers == tuple(
            f"It is {w}." for w in wrong
        )  # the paraphrase's wording with the generated QA's wrong values, as TOFU's perturbed answers
        assert record.question == "Fill in the record. " + q.question
        assert record.answer == f"{q.subject} | {q.attribute.replace('_', ' ')}: {true}"
        assert len(set(record.perturbed_answers)) == len(wrong) and all(
            p.endswith(f": {w}") for p, w in zip(record.perturbed_answers, wrong)
        )
        assert true not in wrong and q.subject in q.question
    with pytest.raises(ConfigError, match="scenario.answer_format='poem' is invalid; valid choices: sentence"):
        in_format(qas[0], "poem")


def _answers_by_event(stream) -> list[list[str]]:
    answers = stream.extras["answers"]
    return [[answers[int(i)] for i in e.train.ids] for e in stream.learn_experiences]


def test_scenario_gives_each_learn_event_its_format():
    load_plugins(())
    node = {"name": "fictitious_authors", "n_authors": 6, "qa_per_author": 3, "n_world_facts": 6}
    node |= {"n_holdout_authors": 2, "forget": 0, "world_facts": "stage", "stages": 2, "max_length": 48}
    stream = SCENARIOS.build({**node, "answer_format": ["record", "short", "sentence"]}, seed=0)
    plain = SCENARIOS.build(node, seed=0)
    corpus = fictitious_authors(6, 3, 6, 2, seed=0)
    world, first, second = _answers_by_event(stream)
    assert world == [in_format(q, "record").answer for q in corpus.world_facts]
    assert first == [in_format(q, "short").answer for q in corpus.qa if q.group < 3]
    assert second == [q.answer for q in corpus.qa if q.group >= 3]  # sentence: the corpus's own answers
    assert _answers_by_event(plain) == [
        [q.answer for q in corpus.world_facts],
        [q.answer for q in corpus.qa if q.group < 3],
        second,
    ]  # the default is one format for every stage: sentences
    holdout = stream.extras["holdout"]["holdout"]["answers"]
    assert holdout == [q.answer for q in corpus.holdout]  # the forgotten authors' (last) stage's format
    utility = stream.extras["utility"]["world_facts"]["answers"]
    assert utility == world
    same = SCENARIOS.build({**node, "answer_format": ["sentence"] * 3}, seed=0)
    assert all(torch.equal(a.train.x, b.train.x) for a, b in zip(same.learn_experiences, plain.learn_experiences))


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("poem", "scenario.answer_format='poem' is invalid; valid choices: sentence, short, record"),
        (["short", "poem", "sentence"], "valid choices: sentence, short, record"),
        (["short", "sentence"], "expected one of sentence, short, record or a list of 3 of them. one per learn"),
    ],
)
def test_answer_format_errors(value, message):
    load_plugins(())
    node = {"name": "fictitious_authors", "n_authors": 6, "qa_per_author": 2, "n_world_facts": 4, "forget": 0}
    with pytest.raises(ConfigError, match="scenario.answer_format") as err:
        SCENARIOS.build({**node, "world_facts": "stage", "stages": 2, "answer_format": value}, seed=0)
    assert message in str(err.value) and "\n" not in str(err.value)


# ------------------------------------------------------------------------------------------------ orders


def test_every_order_permutes_the_same_stages_and_forgets_the_same_set(make_cfg):
    """experiment=tofu_paths: three stages with distinct data and tasks, in each of the 6 orders; the forget
    set, the retain set and the stage contents are the same whatever the order, and the oracle's training
    stages (same order, forget set removed) contain no forgotten sample."""
    load_plugins(())
    node = lambda o: make_cfg("experiment=tofu_paths", *SMALL_LM, f"scenario.order=[{','.join(o)}]").scenario  # noqa: E731
    streams = {o: SCENARIOS.build(node(o), seed=0) for o in ORDERS}
    ref = streams["012"]
    stages = [(e.classes, e.train.ids.tolist()) for e in ref.learn_experiences]
    world, short, sentences = _answers_by_event(ref)
    assert all(" | " in a for a in world) and not any(a.endswith(".") or " | " in a for a in short)
    assert all(a.endswith(".") for a in sentences)  # records, short answers, sentences (the forget set's stage)
    forget = ref.experiences[3].forget.ids
    assert sorted(set(ref.experiences[3].forget.y.tolist())) == [10, 11]
    for order, stream in streams.items():
        assert [(e.classes, e.train.ids.tolist()) for e in stream.learn_experiences] == [stages[int(i)] for i in order]
        exp = stream.experiences[3]
        assert exp.kind == "forget" and torch.equal(exp.forget.ids, forget)
        assert torch.equal(exp.retain.ids.sort().values, ref.experiences[3].retain.ids.sort().values)
        oracle = oracle_experiences(stream, 3)
        assert [e.classes for e in oracle] == [stages[int(i)][0] for i in order]
        fed = torch.cat([e.train.ids for e in oracle])
        assert not torch.isin(fed, forget).any() and len(fed) + len(forget) == sum(len(s[1]) for s in stages)


# ------------------------------------------------------------------------------------------------ the driver


def test_summaries_of_the_driver(driver):
    curve = [{"step": 0, "forget_ll": -0.1}, {"step": 5, "forget_ll": -2.0}, {"step": 10, "forget_ll": -6.0}]
    assert driver.steps_to_reach(curve, "forget_ll", -3.0) == 10
    assert driver.steps_to_reach(curve, "forget_ll", -2.0) == 5  # at the oracle's level counts
    assert driver.steps_to_reach(curve, "forget_ll", -7.0) is None and driver.steps_to_reach(curve, "x", None) is None
    s = driver.spread([0.2, 0.5, 0.3], 100.0)
    assert s["min"] == pytest.approx(20) and s["range"] == pytest.approx(30)
    assert s["std"] == pytest.approx(np.std([20, 50, 30]))
    e = {"unlearn/a": 0.25, "oracle/a": 0.5, "unlearn/b": 1.0, "oracle/b": 0.5, "unlearn/cka/layer_10": 3}
    e["unlearn/cka/layer_9"] = 2
    assert driver.gaps(e, ("a", "b")) == {"a": 0.25, "b": 0.5, "average": 0.375}
    assert driver.lookup(e, "unlearn/cka/layer_*") == 3 and driver.lookup(e, "unlearn/none") is None


VISION_SMALL = ["unlearning.steps=6", "unlearning.eval_every=2", "+evaluators.0.relearn=false"]


def test_vision_driver_matches_clframe_run_and_reports_the_spread(driver, tmp_path, make_cfg):
    """Two orders x GA / NPO through the shared driver: every order's oracle never saw class 1; the numbers are
    those of ``clframe run`` with the same overrides; the distance to the oracle is the evaluator's gap; the
    oracle's probed forget accuracy is the evaluator's; the spread table is the numbers' min / max / std."""
    out = tmp_path / "pd"
    args = ["--modality", "vision", "--orders", "012", "201", "--methods", "ga", "npo", "--out", str(out)]
    driver.main([*args, *VISION_SMALL])
    results = json.loads((out / "digits_ga_npo.json").read_text())
    assert set(results) == {"ga", "npo"} and all(set(r) == {"012", "201"} for r in results.values())
    for by_order in results.values():
        for e in by_order.values():
            assert e["oracle/n_trained_forgotten"] == 0 and e["oracle/forget_acc"] == 0.0
            assert e["oracle/probe"]["forget_acc"] == e["oracle/forget_acc"]
            assert e["oracle/probe"]["test_acc"] == pytest.approx(e["oracle/test_acc"])  # both: the whole split
            g = driver.gaps(e, driver.MODALITIES["vision"].gap)
            assert [g[k] for k in ("forget_acc", "retain_acc", "test_acc")] == [
                e[f"unlearn/gap/{k}"] for k in ("forget", "retain", "test")
            ]
            assert g["average"] == pytest.approx(e["unlearn/avg_gap"])
            assert e["unlearn/curve"][0]["forget_acc"] == pytest.approx(e["original/forget_acc"])
    assert results["ga"]["012"]["original/retain_acc"] == results["npo"]["012"]["original/retain_acc"]  # one learning
    assert results["ga"]["012"]["original/retain_acc"] != results["ga"]["201"]["original/retain_acc"]  # two paths
    preset = ("experiment=path_dependence_digits", "unlearning=npo", "unlearning.retain_weight=0.0")
    direct = run(make_cfg(*preset, "scenario.order=[2,0,1]", *VISION_SMALL))  # clframe run, one order and method
    ev = next(e["unlearning"] for e, r in zip(direct["evaluations"], direct["row_events"]) if r["kind"] == "forget")
    mine = results["npo"]["201"]
    assert {k: v for k, v in ev.items() if k != "oracle/cached"} == {
        k: v for k, v in mine.items() if k not in ("oracle/cached", "oracle/probe")
    }
    text = (out / "digits_ga_npo.md").read_text()
    retain = [100 * results["ga"][o]["unlearn/retain_acc"] for o in ("012", "201")]
    row = next(line for line in text.splitlines() if line.startswith("| after unlearning: retain |"))
    assert row == (
        f"| after unlearning: retain | {min(retain):.1f} | {max(retain):.1f} | {max(retain) - min(retain):.1f} "
        f"| {np.std(retain):.2f} |"
    )
    assert (out / "digits_ga_npo_paths.png").stat().st_size > 10_000
    before = {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*.json")}
    driver.main([*args, *VISION_SMALL])  # a rerun reuses every finished (order, method)
    assert {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*.json")} == before
    assert json.loads((out / "digits_ga_npo.json").read_text()) == results


def test_lm_driver_runs_every_path_against_its_own_oracle(driver, tmp_path):
    """The language-model study through the same driver (tiny sizes): per order one learning, the tofu evaluator
    against that order's oracle, which never saw the forgotten authors; the forget-set log-likelihood trajectory
    starts at the original model's value and the oracle's level is the oracle's own likelihood of the forget set."""
    out = tmp_path / "lm"
    small = [*SMALL_LM, "backbone.hidden_size=32", "backbone.layers=1", "strategy.batch_size=8"]
    small += ["trainer.max_epochs=6", "unlearning.steps=4", "unlearning.eval_every=2"]
    small += ["evaluators=[{name: tofu, max_new_tokens: 8, generation: false, probe: false}]"]
    driver.main(["--modality", "lm", "--orders", "012", "210", "--methods", "npo", "--out", str(out), *small])
    results = json.loads((out / "authors_npo.json").read_text())["npo"]
    for e in results.values():
        assert e["oracle/n_trained_forgotten"] == 0
        curve = e["unlearn/curve"]
        assert [h["step"] for h in curve] == [0, 2, 4] and curve[-1]["forget_ll"] < curve[0]["forget_ll"]
        assert e["oracle/probe"]["forget_ll"] < curve[0]["forget_ll"]  # the oracle never learned these authors
    assert results["012"]["original/forget_prob"] != results["210"]["original/forget_prob"]
    text = (out / "authors_npo.md").read_text()
    assert "| gap to oracle: forget prob |" in text and "forget-set log-likelihood per token over unlearning" in text
