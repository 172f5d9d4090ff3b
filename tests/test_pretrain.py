"""Pretraining stage: disjoint pretraining works, the leakage guard fails on overlap (classes or
samples), allow_overlap records it, saved backbones reload with their metadata, freeze holds."""

from __future__ import annotations

import json

import pytest
import torch

from clframe.data import load_dataset, register_dataset
from clframe.errors import ConfigError
from clframe.runner import run
from tests.conftest import BLOBS

DISJOINT = ("+scenario.classes=[5,6,7,8,9]", "scenario.n_experiences=5")
PRE_0_4 = "+pretrain={dataset: blobs, classes: [0,1,2,3,4], epochs: 5, lr: 0.05}"


@register_dataset("blobs_copy")  # the same samples under another name: only the content check can see it
def _blobs_copy():
    return load_dataset("blobs")


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
