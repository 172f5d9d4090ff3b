"""Avalanche benchmarks as clframe streams: same data and same accuracy matrix as the native split."""

from __future__ import annotations

import pytest
import torch

from clframe.data import DataNotFoundError
from clframe.errors import ConfigError
from clframe.registry import SCENARIOS
from tests.conftest import require_data

ORDER = [3, 1, 0, 2, 4, 5, 6, 7, 8, 9]
TINY = ("backbone.hidden=[32]", "trainer.max_epochs=1", "trainer.limit_train_batches=4", "strategy.batch_size=64")


def test_split_mnist_adapter_equals_native_split():
    require_data("mnist")
    ava = SCENARIOS.build(
        {"name": "avalanche", "benchmark": "SplitMNIST", "args": {"n_experiences": 5, "fixed_class_order": ORDER}},
        seed=0,
    )
    nat = SCENARIOS.build({"name": "split", "dataset": "mnist", "class_order": ORDER}, seed=0)
    assert (ava.n_classes, ava.input_shape, ava.setting) == (nat.n_classes, nat.input_shape, nat.setting)
    for a, b in zip(ava.experiences, nat.experiences, strict=True):
        assert sorted(a.classes) == sorted(b.classes)
        for split in ("train", "test"):  # same samples, same order, same original ids
            da, db = getattr(a, split), getattr(b, split)
            assert torch.equal(da.ids, db.ids) and torch.equal(da.y, db.y) and torch.equal(da.x, db.x)


@pytest.mark.slow
def test_split_mnist_adapter_gives_native_accuracy_matrix(make_cfg):
    """Same data in the same order + same seed -> bit-identical accuracy matrix (runs both streams)."""
    require_data("mnist")
    from clframe.runner import run

    order = f"[{','.join(map(str, ORDER))}]"
    r_ava = run(make_cfg("scenario=avalanche", f"+scenario.args.fixed_class_order={order}", "strategy=naive", *TINY))
    r_nat = run(make_cfg("scenario=split_mnist", f"scenario.class_order={order}", "strategy=naive", *TINY))
    assert r_ava["accuracy_matrix"] == r_nat["accuracy_matrix"]


def test_avalanche_order_keeps_class_grouping():
    require_data("mnist")
    s = SCENARIOS.build(
        {
            "name": "avalanche",
            "benchmark": "SplitMNIST",
            "order": "avalanche",
            "args": {"n_experiences": 5, "fixed_class_order": list(range(10))},
        },
        seed=0,
    )
    y = s.experiences[0].train.y
    assert torch.equal(y, y.sort().values)  # Avalanche lists class 0, then class 1: why order=original exists


@pytest.mark.slow
def test_permuted_mnist_adapter():
    require_data("mnist")
    s = SCENARIOS.build(
        {"name": "avalanche", "benchmark": "PermutedMNIST", "setting": "domain", "args": {"n_experiences": 2}}, seed=0
    )
    a, b = s.experiences
    assert s.setting == "domain" and a.classes == b.classes == list(range(10))
    assert len(a.train) == 60000 and len(a.test) == 10000 and a.train.x.shape[1:] == (1, 28, 28)
    assert torch.equal(a.train.y, b.train.y) and not torch.equal(a.train.x, b.train.x)
    # a permutation moves pixels: every image keeps its multiset of pixel values
    assert torch.equal(a.train.x[0].flatten().sort().values, b.train.x[0].flatten().sort().values)


def test_adapter_errors(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="scenario.benchmark.*SplitMNIST"):
        SCENARIOS.build({"name": "avalanche", "benchmark": "SplitMNISTX"}, seed=0)
    monkeypatch.setenv("CLFRAME_DATA_ROOT", str(tmp_path))
    with pytest.raises(DataNotFoundError, match="CLFRAME_DATA_ROOT"):  # never falls through to a download
        SCENARIOS.build({"name": "avalanche", "benchmark": "SplitMNIST"}, seed=0)
