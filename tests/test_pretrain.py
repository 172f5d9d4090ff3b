"""Pretraining stage: disjoint pretraining works, the leakage guard fails on overlap (classes or
samples), allow_overlap records it, saved backbones reload with their metadata, freeze holds."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch

from clframe import pretrain
from clframe.data import load_dataset, register_dataset
from clframe.errors import ConfigError
from clframe.runner import run
from clframe.stream import LazyRows, TensorData
from tests.conftest import BLOBS

DISJOINT = ("+scenario.classes=[5,6,7,8,9]", "scenario.n_experiences=5")
PRE_0_4 = "+pretrain={dataset: blobs, classes: [0,1,2,3,4], epochs: 5, lr: 0.05}"


@register_dataset("blobs_copy")  # the same samples under another name: only the content check can see it
def _blobs_copy():
    return load_dataset("blobs")


class CountingRows:
    """A ``LazyRows`` function over a tensor that records how many rows each call reads (a disk-backed data
    set decodes that many images at once)."""

    __name__ = "counting_rows"

    def __init__(self, x: torch.Tensor):
        self.x, self.calls = x, []

    def __call__(self, rows: torch.Tensor) -> torch.Tensor:
        self.calls.append(len(rows))
        return self.x[rows]


ON_DISK: dict[str, CountingRows] = {}


@register_dataset("blobs_on_disk")  # blobs, read through LazyRows as an ImageFolder tree is
def _blobs_on_disk():
    parts = []
    for split, data in zip(("train", "test"), load_dataset("blobs")):
        ON_DISK[split] = CountingRows(data.x)
        parts.append(TensorData(LazyRows(torch.arange(len(data)), ON_DISK[split]), data.y, data.ids, data.task))
    return tuple(parts)


def reference_hashes(x: torch.Tensor) -> set[int]:
    """The content hashes computed on the whole tensor at once (how the leakage check used to read it)."""
    rows = x.contiguous().numpy().reshape(len(x), -1)
    return {int.from_bytes(hashlib.blake2b(r.tobytes(), digest_size=8).digest(), "little", signed=True) for r in rows}


def test_sample_hashes_read_a_lazy_data_set_in_chunks():
    x = torch.randn(2500, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    x[7] = x[1234]  # one duplicate: 2,499 distinct contents
    fn = CountingRows(x)
    lazy = TensorData(LazyRows(torch.arange(2500), fn), torch.zeros(2500, dtype=torch.long), torch.arange(2500),
                      torch.zeros(2500, dtype=torch.long))  # fmt: skip
    fn.calls.clear()
    hashes = pretrain.sample_hashes(lazy)
    assert hashes == reference_hashes(x) and len(hashes) == 2499
    assert max(fn.calls) == pretrain.HASH_CHUNK < 2500 and sum(fn.calls) == 2500  # each row read once


def test_pretraining_on_a_disk_backed_data_set_reads_it_batch_by_batch(make_cfg, monkeypatch):
    """Pretraining data held as LazyRows is subset, trained on and hashed without ever being read whole, and
    gives the numbers of the same data in memory."""
    monkeypatch.setattr(pretrain, "HASH_CHUNK", 50)
    pre = "+pretrain={{dataset: {}, classes: [0,1,2,3,4], epochs: 2, lr: 0.05, batch_size: 32, allow_overlap: true}}"
    eager = run(make_cfg(*BLOBS, "strategy=naive", pre.format("blobs")))["pretrain"]
    load_dataset("blobs_on_disk")
    ON_DISK["train"].calls.clear()
    lazy = run(make_cfg(*BLOBS, "strategy=naive", pre.format("blobs_on_disk")))["pretrain"]
    calls = ON_DISK["train"].calls
    assert max(calls) <= 50 and sum(calls) >= 3 * 200  # hashed once, two epochs of 200: always in pieces
    assert eager["overlap"] == {
        "same_dataset": True,
        "classes": [0, 1, 2, 3, 4],
        "samples": 200,
        "samples_checked": True,
    }
    assert lazy["overlap"] == {"same_dataset": False, "classes": [], "samples": 200, "samples_checked": True}
    assert (lazy["train_loss"], lazy["train_acc"], lazy["n_samples"]) == (
        eager["train_loss"],
        eager["train_acc"],
        eager["n_samples"],
    )


def test_disjoint_pretraining_trains_backbone_and_records(make_cfg):
    res = run(make_cfg(*BLOBS, *DISJOINT, "strategy=naive", PRE_0_4))
    pre = res["pretrain"]
    assert pre["source"] == "trained" and pre["classes"] == [0, 1, 2, 3, 4] and pre["n_samples"] == 200
    assert pre["overlap"] == {"same_dataset": True, "classes": [], "samples": 0, "samples_checked": True}
    assert pre["train_acc"] > 0.9  # the temporary head learned the pretraining classes
    assert json.loads(open(f"{res['run_dir']}/metrics.json").read())["pretrain"]["classes"] == [0, 1, 2, 3, 4]
    assert [e["classes"] for e in res["experiences"]] == [[5], [6], [7], [8], [9]]


def test_leakage_guard_fails_on_class_and_sample_overlap(make_cfg):
    with pytest.raises(ConfigError) as err:  # stream covers 0-9, pretraining 0-4 of the same data set
        run(make_cfg(*BLOBS, "strategy=naive", PRE_0_4))
    msg = str(err.value)
    assert "pretrain.classes" in msg and "5 shared classes [0, 1, 2, 3, 4]" in msg and "200 identical samples" in msg
    assert "pretrain.allow_overlap=true" in msg


def test_leakage_guard_sees_identical_samples_under_another_dataset_name(make_cfg):
    with pytest.raises(ConfigError, match="0 shared classes .* 200 identical samples"):
        run(make_cfg(*BLOBS, "strategy=naive", "+pretrain={dataset: blobs_copy, classes: [0,1,2,3,4], epochs: 1}"))


def test_allow_overlap_runs_and_is_recorded(make_cfg):
    res = run(make_cfg(*BLOBS, "strategy=naive", PRE_0_4[:-1] + ", allow_overlap: true}"))
    assert res["status"] == "complete"
    assert res["pretrain"]["allow_overlap"] is True
    assert res["pretrain"]["overlap"]["classes"] == [0, 1, 2, 3, 4] and res["pretrain"]["overlap"]["samples"] == 200


def test_saved_backbone_reloads_with_guard_and_freeze_holds(make_cfg):
    first = run(make_cfg(*BLOBS, *DISJOINT, "strategy=naive", PRE_0_4[:-1] + ", freeze: true}"))
    saved = first["pretrain"]["saved_to"]
    blob = torch.load(saved, weights_only=True)
    final = torch.load(f"{first['run_dir']}/checkpoints/last.pt", weights_only=True)["model"]
    for k, v in blob["backbone"].items():  # frozen: the stream did not move the backbone
        assert torch.equal(final[f"backbone.{k}"], v), k
    second = run(
        make_cfg(*BLOBS, *DISJOINT, "strategy=naive", f"+pretrain={{path: '{saved}'}}", "trainer.max_epochs=1")
    )
    assert second["pretrain"]["source"] == "loaded" and second["pretrain"]["classes"] == [0, 1, 2, 3, 4]
    with pytest.raises(ConfigError, match="identical samples"):  # metadata travels with the file
        run(make_cfg(*BLOBS, "strategy=naive", f"+pretrain={{path: '{saved}'}}"))


def test_unknown_pretrain_key_is_rejected(make_cfg):
    with pytest.raises(ConfigError, match="pretrain.epoch.*valid choices: .*epochs"):
        run(make_cfg(*BLOBS, "strategy=naive", "+pretrain={dataset: blobs, epoch: 3}"))


def test_freeze_survives_train_mode_and_resume_restore():
    from clframe.backbones.simple import SmallCNN
    from clframe.pretrain import restore_pretraining
    from clframe.strategies.naive import Naive

    strategy = Naive(SmallCNN((1, 8, 8), channels=(4,)), 3)
    restore_pretraining(strategy, {"freeze": True})  # what the runner calls on resume
    strategy.train()  # Lightning does this at fit start
    x = torch.randn(16, 1, 8, 8)
    bn = strategy.backbone.net[1]
    before = bn.running_mean.clone()
    strategy(x)
    assert not strategy.backbone.training and torch.equal(bn.running_mean, before)  # BN statistics fixed
    assert not any(p.requires_grad for p in strategy.backbone.parameters())
    assert all(p.requires_grad for p in strategy.head.parameters())
