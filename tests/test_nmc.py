"""NMC: streaming class means equal batch means; no gradient steps; classifies a blobs stream."""

from __future__ import annotations

import pytest
import torch

from clframe.backbones.simple import MLP
from clframe.runner import run
from clframe.strategies.nmc import NMC, RunningClassMeans
from tests.conftest import BLOBS


def test_streaming_means_equal_batch_means():
    gen = torch.Generator().manual_seed(0)
    feats, labels = torch.randn(500, 8, generator=gen, dtype=torch.float64), torch.randint(0, 6, (500,), generator=gen)
    labels[labels == 5] = 4  # class 5 never appears: its mean stays 0 with count 0
    means, counts = torch.zeros(6, 8, dtype=torch.float64), torch.zeros(6, dtype=torch.float64)
    running = RunningClassMeans(means, counts)
    start = 0
    for size in [1, 1, 7, 64, 3, 200, 1]:  # ragged chunks, single samples included
        running.update(feats[start : start + size], labels[start : start + size])
        start += size
    for i in range(start, 500):  # then strictly sample by sample
        running.update(feats[i : i + 1], labels[i : i + 1])
    for c in range(5):
        assert torch.allclose(means[c], feats[labels == c].mean(0), atol=1e-12)
        assert counts[c] == (labels == c).sum()
    assert counts[5] == 0 and means[5].abs().sum() == 0


def test_observe_is_order_and_batch_independent():
    torch.manual_seed(0)
    net = NMC(MLP((1, 4, 4), hidden=(16,)), 4)
    x, y = torch.randn(40, 1, 4, 4), torch.arange(4).repeat(10)
    net.eval()
    net.observe(x, y)
    batch_means = net.class_means.clone()
    net.class_means.zero_(), net.class_counts.zero_()
    for i in torch.randperm(40).tolist():
        net.observe(x[i : i + 1], y[i : i + 1])
    assert torch.allclose(net.class_means, batch_means, atol=1e-5)


@pytest.mark.parametrize("options", [[], ["strategy.metric=cosine", "strategy.normalize=true"]])
def test_nmc_run_takes_no_gradient_steps(make_cfg, options):
    cfg = make_cfg(*BLOBS, "strategy=nmc", *options)
    res = run(cfg)
    final = torch.load(f"{res['run_dir']}/checkpoints/last.pt", weights_only=True)["model"]
    torch.manual_seed(cfg.seed)  # the backbone the runner built: weights must be untouched
    from clframe.runner import build

    _, fresh = build(cfg)
    for k, v in fresh.backbone.state_dict().items():
        assert torch.equal(final[f"backbone.{k}"], v)
    assert final["class_counts"].tolist() == [40.0] * 10  # every training sample folded in once
    assert res["metrics"]["cl/avg_acc"] > 0.95  # blobs are well separated even in random features


def test_nmc_on_pretrained_backbone_keeps_it_fixed(make_cfg):
    pre = "+pretrain={dataset: blobs, classes: [0,1,2,3,4], epochs: 5, lr: 0.05}"
    cfg = make_cfg(*BLOBS, "strategy=nmc", "+scenario.classes=[5,6,7,8,9]", pre)
    res = run(cfg)
    assert res["pretrain"]["train_acc"] > 0.9
    saved = torch.load(res["pretrain"]["saved_to"], weights_only=True)["backbone"]
    final = torch.load(f"{res['run_dir']}/checkpoints/last.pt", weights_only=True)["model"]
    from clframe.runner import build

    _, fresh = build(cfg)
    k = next(iter(saved))
    assert not torch.equal(saved[k], fresh.backbone.state_dict()[k])  # pretraining did train it
    assert all(torch.equal(final[f"backbone.{k}"], v) for k, v in saved.items())  # and NMC never moved it
    assert res["accuracy_matrix"][-1][-1] > 0.9
