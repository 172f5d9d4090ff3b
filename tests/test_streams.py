"""Rotated (domain-IL) and blurry-boundary (class-IL) streams, seeded class orders."""

from __future__ import annotations

import torch

from clframe.registry import SCENARIOS
from clframe.scenarios.streams import rotate


def test_rotate_quarter_turn_is_exact():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    assert torch.allclose(rotate(x, 90), torch.rot90(x, 1, (2, 3)), atol=1e-4) or torch.allclose(
        rotate(x, 90), torch.rot90(x, -1, (2, 3)), atol=1e-4
    )
    assert torch.allclose(rotate(x, 0), x)


def test_rotated_stream_is_domain_incremental_and_seeded():
    build = lambda seed: SCENARIOS.build(  # noqa: E731
        {"name": "rotated", "dataset": "digits", "n_experiences": 3, "train_per_experience": 100}, seed=seed
    )
    a, b, c = build(0), build(0), build(1)
    assert a.setting == "domain" and [e.classes for e in a.experiences] == [list(range(10))] * 3
    assert [e.name for e in a.experiences] == [e.name for e in b.experiences] != [e.name for e in c.experiences]
    assert len(a.experiences[0].train) == 100 and torch.equal(a.experiences[1].train.x, b.experiences[1].train.x)
    fixed = SCENARIOS.build(
        {"name": "rotated", "dataset": "digits", "angles": [0, 90], "train_per_experience": None}, seed=0
    )
    e0, e1 = fixed.experiences
    assert torch.equal(e0.test.y, e1.test.y) and not torch.allclose(e0.test.x, e1.test.x)


def test_blurry_moves_the_requested_share_and_keeps_tests_disjoint():
    s = SCENARIOS.build(
        {"name": "blurry", "dataset": "digits", "blurry_percent": 10.0, "shuffle_classes": True}, seed=3
    )
    majors = [sorted(torch.unique(e.test.y).tolist()) for e in s.experiences]
    assert sorted(c for m in majors for c in m) == list(range(10))  # tests: disjoint major classes
    assert majors != [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]  # seeded class order
    total = sum(len(e.train) for e in s.experiences)
    foreign = sum(int((~torch.isin(e.train.y, torch.tensor(m))).sum()) for e, m in zip(s.experiences, majors))
    assert 0.06 < foreign / total < 0.14 and total == 1257  # ~10 % of the samples sit in another experience
    sharp = SCENARIOS.build({"name": "blurry", "dataset": "digits", "blurry_percent": 0.0}, seed=0)
    assert [e.classes for e in sharp.experiences] == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]
