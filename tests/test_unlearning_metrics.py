"""Unlearning metrics and loss pieces against values computed by hand on tiny inputs."""

from __future__ import annotations

import math

import pytest
import torch

from clframe.unlearning import metrics as M
from clframe.unlearning.pieces import gaussian_mmd, npo_loss, simnpo_loss, true_logprob


def test_accuracy_gap_and_average_gap():
    logits = torch.tensor([[2.0, 1.0], [0.0, 3.0], [1.0, 0.0], [0.0, 1.0]])
    assert M.accuracy(logits, torch.tensor([0, 1, 1, 1])) == 0.75
    assert M.gap(0.75, 0.5) == 0.25
    assert M.average_gap(
        {"forget": 0.1, "retain": 0.9, "test": 0.8}, {"forget": 0.0, "retain": 1.0, "test": 0.5}
    ) == pytest.approx(0.5 / 3)


def test_oracle_relative_metrics_fail_loudly_without_oracle():
    with pytest.raises(M.OracleUnavailableError, match="retrain oracle.*oracle: true"):
        M.gap(0.5, None, "gap/forget")
    with pytest.raises(M.OracleUnavailableError):
        M.average_gap({"forget": 0.1, "retain": 0.9, "test": 0.8}, None)
    with pytest.raises(M.OracleUnavailableError):
        M.kl_divergence(None, torch.zeros(1, 2))


def test_kl_and_js_by_hand():
    # P = (1/2, 1/2), Q = (1/4, 3/4) for one sample
    p, q = torch.log(torch.tensor([[0.5, 0.5]])), torch.log(torch.tensor([[0.25, 0.75]]))
    kl = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    assert M.kl_divergence(p, q) == pytest.approx(kl, abs=1e-6)
    m = [0.375, 0.625]
    js = 0.5 * (0.5 * math.log(0.5 / m[0]) + 0.5 * math.log(0.5 / m[1])) + 0.5 * (
        0.25 * math.log(0.25 / m[0]) + 0.75 * math.log(0.75 / m[1])
    )
    assert M.js_divergence(p, q) == pytest.approx(js, abs=1e-6)
    # disjoint one-hot-like distributions: JS reaches ln 2; identical: 0
    assert M.js_divergence(torch.tensor([[50.0, -50.0]]), torch.tensor([[-50.0, 50.0]])) == pytest.approx(
        math.log(2), abs=1e-6
    )
    assert M.kl_divergence(q, q) == pytest.approx(0.0, abs=1e-12)


def test_mia_auc_by_hand():
    # members' scores 3, 1 vs non-members 2, 0: pairs won 3>2, 3>0, 1>0 (1<2 lost) -> 3/4
    assert M.mia_auc(torch.tensor([3.0, 1.0]), torch.tensor([2.0, 0.0])) == 0.75
    # loss attack: members with lower loss get higher scores -> perfect separation
    members = torch.tensor([[5.0, 0.0], [0.0, 5.0]])
    non = torch.tensor([[0.1, 0.0], [0.0, 0.2]])
    y = torch.tensor([0, 1])
    assert M.loss_mia_auc(members, y, non, y) == 1.0
    assert M.entropy_mia_auc(members, non) == 1.0


def test_steps_to_reach():
    assert M.steps_to_reach([0.1, 0.5, 0.95, 0.2], 0.9) == 2
    assert M.steps_to_reach([0.95], 0.9) == 0
    assert M.steps_to_reach([0.1, 0.2], 0.9) is None


def test_knn_by_hand():
    train_x = torch.tensor([[0.0], [1.0], [10.0], [11.0], [12.0]])
    train_y = torch.tensor([0, 0, 1, 1, 1])
    test_x, test_y = torch.tensor([[0.4], [10.6], [6.0]]), torch.tensor([0, 1, 0])
    # 1-NN: 0.4 -> 0 (label 0), 10.6 -> 11 (label 1), 6.0 -> 1.0 (dist 5) vs 10 (dist 4) -> label 1: wrong
    assert M.knn_accuracy(train_x, train_y, test_x, test_y, k=1) == pytest.approx(2 / 3)
    # 3-NN of 6.0: 10, 11, 1 -> votes 1,1,0 -> label 1 (wrong); of 0.4: 0, 1, 10 -> 0
    assert M.knn_accuracy(train_x, train_y, test_x, test_y, k=3) == pytest.approx(2 / 3)


def test_linear_probe_separable():
    x = torch.tensor([[0.0, 0.0], [0.1, 0.2], [3.0, 3.0], [3.2, 2.9]])
    y = torch.tensor([0, 0, 1, 1])
    assert M.linear_probe_accuracy(x, y, torch.tensor([[0.05, 0.1], [3.1, 3.1]]), torch.tensor([0, 1])) == 1.0


def test_linear_cka_by_hand():
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]])
    assert M.linear_cka(x, x) == pytest.approx(1.0)
    assert M.linear_cka(x, 3 * x @ torch.tensor([[0.0, 1.0], [-1.0, 0.0]])) == pytest.approx(1.0)  # rotation + scale
    # two 1-d representations of 4 samples: centred a = (-1.5,-.5,.5,1.5), b = (1,-1,-1,1): a.b = 0 -> CKA 0
    a, b = torch.tensor([[0.0], [1.0], [2.0], [3.0]]), torch.tensor([[1.0], [-1.0], [-1.0], [1.0]])
    assert M.linear_cka(a, b) == pytest.approx(0.0, abs=1e-12)
    # a vs c = (0,0,0,1): centred c = (-.25,-.25,-.25,.75); (a.c)^2 / (|a|^2 |c|^2) = 1.5^2 / (5 * 0.75) = 0.6
    assert M.linear_cka(a, torch.tensor([[0.0], [0.0], [0.0], [1.0]])) == pytest.approx(0.6)


def test_npo_and_simnpo_losses_by_hand():
    logits = torch.log(torch.tensor([[0.8, 0.2]]))
    y = torch.tensor([0])
    logp = true_logprob(logits, y)
    assert float(logp) == pytest.approx(math.log(0.8))
    # NPO = (2/b) log(1 + (pi/pi_ref)^b) with pi = 0.8, pi_ref = 0.4, b = 0.5
    ref = torch.tensor([math.log(0.4)])
    assert float(npo_loss(logp, ref, 0.5)) == pytest.approx(4 * math.log(1 + 2**0.5), rel=1e-6)
    # SimNPO = -(2/b) log sigmoid(-b log pi - g), b = 0.5, g = 1
    z = -0.5 * math.log(0.8) - 1.0
    assert float(simnpo_loss(logp, 0.5, 1.0)) == pytest.approx(-4 * math.log(1 / (1 + math.exp(-z))), rel=1e-6)
    # NPO at pi == pi_ref equals (2/b) log 2, and its gradient pushes log pi down
    lp = logp.clone().requires_grad_(True)
    npo_loss(lp, lp.detach(), 0.5).backward()
    assert lp.grad.item() > 0


def test_mmd_zero_for_same_and_positive_for_shifted():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 8, generator=g)
    assert float(gaussian_mmd(x, x)) == pytest.approx(0.0, abs=1e-6)
    assert float(gaussian_mmd(x, x + 3)) > 0.5


def test_linear_cka_wide_activations_use_gram_matrices():
    """Conv activations are much wider than the sample count: the n x n Gram form must give the
    feature-space value (x.T @ x would be d x d)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(20, 500, generator=gen)
    y = x @ torch.randn(500, 300, generator=gen) + torch.randn(20, 300, generator=gen)
    xc, yc = (x - x.mean(0)).double(), (y - y.mean(0)).double()
    feature_space = (yc.T @ xc).pow(2).sum() / ((xc.T @ xc).norm() * (yc.T @ yc).norm())
    assert M.linear_cka(x, y) == pytest.approx(float(feature_space), rel=1e-9)
    assert 0.0 < M.linear_cka(x, y) < 1.0
