"""Forget requests inside a stream: the events built, the retain set, later exclusion, clear errors."""

from __future__ import annotations

import pytest
import torch

from clframe.errors import ConfigError
from clframe.registry import SCENARIOS

BASE = {"name": "split", "dataset": "blobs", "n_experiences": 5}


def build(requests, **kw):
    return SCENARIOS.build({"name": "unlearning", "base": BASE, "requests": requests, **kw}, seed=0)


def test_issue_example_stream():
    """learn 0-1, learn 2-3, forget class 1, learn 4-5, forget 30% of experience (index) 1."""
    s = build(
        [
            {"after": 1, "type": "class", "classes": [1]},
            {"after": 2, "type": "fraction", "experience": 1, "fraction": 0.3},
        ]
    )
    kinds = [e.kind for e in s.experiences]
    assert kinds == ["learn", "learn", "forget", "learn", "forget", "learn", "learn"]
    assert [e.id for e in s.experiences] == list(range(7))
    f1, f2 = s.experiences[2], s.experiences[4]
    assert set(f1.forget.y.tolist()) == {1} and len(f1.forget) == 40  # blobs: 40 train samples per class
    assert set(f1.retain.y.tolist()) == {0, 2, 3}  # seen minus forget
    assert not torch.isin(f1.retain.ids, f1.forget.ids).any()
    assert len(f2.forget) == round(0.3 * 80) and set(f2.forget.y.tolist()) <= {2, 3}
    # retain after the 2nd request: everything learned (0,2,3,4,5) minus both forget sets
    assert len(f2.retain) == 5 * 40 - len(f2.forget)
    assert not torch.isin(f2.retain.ids, torch.cat([f1.forget.ids, f2.forget.ids])).any()
    assert set(f2.test.y.tolist()) == {0, 1, 2, 3, 4, 5}  # test splits of the learned experiences


def test_forgotten_samples_never_reappear_in_later_experiences():
    s = build([{"after": 0, "type": "ids", "ids": [0, 1, 2]}])
    gone = s.experiences[1].forget.ids
    assert sorted(gone.tolist()) == [0, 1, 2]
    for e in s.experiences[2:]:
        assert not torch.isin(e.train.ids, gone).any()


def test_experience_request_and_retain_budget():
    s = build([{"after": 2, "type": "experience", "experience": 0}], retain_budget=30)
    f = s.experiences[3]
    assert set(f.forget.y.tolist()) == {0, 1} and len(f.retain) == 30
    s = build([{"after": 2, "type": "experience", "experience": 0}], retain_budget=0.5)
    assert len(s.experiences[3].retain) == 80  # half of the 160 retained samples


def test_order_permutes_stages():
    s = build([{"after": 2, "type": "class", "classes": [0]}], order=[2, 0, 1, 3, 4])
    assert [e.classes for e in s.experiences[:3]] == [[4, 5], [0, 1], [2, 3]]
    with pytest.raises(ConfigError, match="scenario.order"):
        build([], order=[0, 0, 1, 2, 3])


@pytest.mark.parametrize(
    "request_, match",
    [
        ({"after": 1, "type": "class", "classes": [7]}, r"classes=\[7\].*valid choices: 0, 1, 2, 3"),  # never seen
        ({"after": -1, "type": "class", "classes": [0]}, r"after=-1.*before it"),  # before any learning
        ({"after": 1, "type": "ids", "ids": [99999]}, r"ids=\[99999\].*out of range"),  # id out of range
        ({"after": 1, "type": "fraction", "experience": 0, "fraction": 0.001}, r"forget set is empty"),
        ({"after": 1, "type": "fraction", "experience": 3, "fraction": 0.5}, r"experience=3.*valid choices: 0, 1"),
        ({"after": 1, "type": "everything"}, r"type='everything'.*class, fraction, experience, ids"),
    ],
)
def test_bad_requests_have_clear_errors(request_, match):
    with pytest.raises(ConfigError, match=match):
        build([request_])


def test_forgetting_a_class_twice_is_an_empty_request():
    with pytest.raises(ConfigError, match="classes"):
        build([{"after": 1, "type": "class", "classes": [1]}, {"after": 2, "type": "class", "classes": [1]}])


def test_forget_events_are_named_after_what_they_forget():
    """``forget_class_1`` forgets class 1 (it used to be ``forget_class_0``: the request's index)."""
    base = {"name": "split", "dataset": "blobs", "setting": "class", "n_experiences": 5}
    requests = [
        {"after": 1, "type": "class", "classes": [1]},
        {"after": 2, "type": "fraction", "experience": 1, "fraction": 0.3},
        {"after": 3, "type": "class", "classes": [0, 4]},
    ]
    stream = SCENARIOS.build({"name": "unlearning", "base": base, "requests": requests}, seed=0)
    forget = [e for e in stream.experiences if e.kind == "forget"]
    assert [e.name for e in forget] == ["forget_class_1", "forget_30pct_exp1", "forget_classes_0_4"]
    assert forget[0].removed_classes == [1]


def test_list_help_prints_usage(capsys):
    from clframe.cli import main

    assert main(["list", "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: clframe list") and "strategy:" not in out
