"""TOFU / open-unlearning metric definitions (clframe.unlearning.tofu_metrics) on hand-computed examples."""

import math

import numpy as np
import pytest
import torch
from scipy.stats import hmean, ks_2samp
from sklearn.metrics import roc_auc_score

from clframe.unlearning.tofu_metrics import (
    forget_quality,
    forget_quality_log10,
    loss_scores,
    mia_auc,
    min_k_scores,
    model_utility,
    normalized_probability,
    option_probability,
    privleak,
    rouge1_recall,
    rouge_l_recall,
    truth_ratio,
    truth_ratio_closer_to_1_better,
    truth_ratio_true_better,
)

L = math.log


def test_normalized_probability_is_the_per_token_geometric_mean():
    # answers of 2 and 3 tokens whose per-token probabilities multiply to 0.5^2 and 0.2^3
    p = normalized_probability(torch.tensor([2 * L(0.5), 3 * L(0.2)]), torch.tensor([2, 3]))
    assert isinstance(p, np.ndarray)
    np.testing.assert_allclose(p, [0.5, 0.2])
    assert loss_scores([2 * L(0.5)], [2]) == pytest.approx([L(2)])


def test_normalized_probability_matches_open_unlearning_evaluate_probability():
    """exp(-(sum of token CE over labels != -100) / count), as src/evals/metrics/utils.py::evaluate_probability."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 6, 11, generator=g)
    labels = torch.randint(0, 11, (3, 6), generator=g)
    labels[:, :2] = -100  # the question
    labels[1, 5] = -100  # padding
    shifted = labels[:, 1:]
    ce = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), shifted, ignore_index=-100, reduction="none")
    reference = torch.exp(-ce.sum(-1) / (labels != -100).sum(-1))
    logp = torch.log_softmax(logits[:, :-1], -1).gather(2, shifted.clamp(min=0)[..., None])[..., 0]
    logp_sum = (logp * (shifted != -100)).sum(-1)
    np.testing.assert_allclose(normalized_probability(logp_sum, (labels != -100).sum(-1)), reference, rtol=1e-6)


def test_option_probability_uses_length_normalised_probabilities():
    # true answer: 2 tokens, p^(1/2) = 0.6; wrong options: 1 token p = 0.3, 3 tokens p^(1/3) = 0.1
    got = option_probability([2 * L(0.6)], [2], [[L(0.3), 3 * L(0.1)]], [[1, 3]])
    assert got == pytest.approx([0.6 / (0.6 + 0.3 + 0.1)])
    unnormalised = 0.36 / (0.36 + 0.3 + 0.001)
    assert abs(got[0] - unnormalised) > 0.01
    # torch input, several rows
    got = option_probability(
        torch.tensor([L(0.5), L(0.2)]), torch.tensor([1, 1]), torch.log(torch.tensor([[0.25, 0.25], [0.2, 0.6]])), 1
    )
    np.testing.assert_allclose(got, [0.5, 0.2 / 1.0])


def test_truth_ratio_is_geometric_mean_of_perturbed_over_paraphrased():
    # paraphrase p^(1/|a|) = 0.5; perturbed answers 0.1 (1 token) and 0.4 (2 tokens):
    # geometric mean sqrt(0.1 * 0.4) = 0.2 -> R = 0.4  (arithmetic mean 0.25 would give 0.5; inverted 2.5)
    r = truth_ratio([2 * L(0.5)], [2], [[L(0.1), 2 * L(0.4)]], [[1, 2]])
    assert r == pytest.approx([0.4])


def test_truth_ratio_matches_tofu_formula_on_random_values():
    """TOFU evaluate_util.py: exp(gt_loss_per_token - perturb_loss_per_token.mean(-1))."""
    rng = np.random.default_rng(0)
    para_len, pert_len = rng.integers(1, 20, 8), rng.integers(1, 20, (8, 5))
    para_logp, pert_logp = -rng.uniform(0.1, 30, 8), -rng.uniform(0.1, 30, (8, 5))
    expected = np.exp(-para_logp / para_len - (-pert_logp / pert_len).mean(-1))
    np.testing.assert_allclose(truth_ratio(para_logp, para_len, pert_logp, pert_len), expected)


def test_truth_ratio_aggregators():
    r = np.array([0.5, 2.0, 1.0])
    assert truth_ratio_closer_to_1_better(r) == pytest.approx((0.5 + 0.5 + 1.0) / 3)
    assert truth_ratio_true_better(r) == pytest.approx(0.5 / 3)
    assert truth_ratio_true_better(torch.tensor([0.0, 0.25])) == pytest.approx((1.0 + 0.75) / 2)


def test_forget_quality_is_the_ks_p_value():
    rng = np.random.default_rng(0)
    a, b = rng.lognormal(0, 1, 40), rng.lognormal(0.3, 1, 50)
    assert forget_quality(a, b) == pytest.approx(ks_2samp(a, b).pvalue)
    # invariant under R -> 1/R (open-unlearning's get_forget_quality passes the reciprocals)
    assert forget_quality(1 / a, 1 / b) == pytest.approx(forget_quality(a, b))
    assert forget_quality(torch.tensor(a), a) == 1.0
    assert forget_quality_log10(a, a) == 0.0
    far = forget_quality(rng.normal(0, 1, 100), rng.normal(3, 1, 100))
    assert far < 1e-5
    assert forget_quality_log10(a, b) == pytest.approx(math.log10(ks_2samp(a, b).pvalue))


def test_model_utility_is_the_harmonic_mean():
    assert model_utility([0.5, 0.25, 1.0]) == pytest.approx(3 / (2 + 4 + 1))
    vals = np.random.default_rng(1).uniform(0.05, 1, 9)
    assert model_utility(vals) == pytest.approx(hmean(vals))
    assert model_utility({"retain_prob": 0.9, "ra_rouge": 0.0, "wf_tr": 0.6}) == 0.0
    with pytest.raises(ValueError, match="ra_rouge"):
        model_utility({"retain_prob": 0.9, "ra_rouge": -0.1})
    with pytest.raises(ValueError):
        model_utility([0.5, float("nan")])
    with pytest.raises(ValueError):
        model_utility([])


def test_rouge_l_recall_hand_computed():
    ref = "the cat sat on the mat"
    # LCS("the cat on mat", ref) = 4 tokens out of 6 reference tokens
    assert rouge_l_recall(["the cat on mat"], [ref]) == pytest.approx([4 / 6])
    # recall, not precision: a longer prediction containing the reference scores 1
    assert rouge_l_recall([ref + " today"], [ref]) == pytest.approx([1.0])
    # Porter stemming: cats -> cat, running -> run
    assert rouge_l_recall(["cat run"], ["The cats are running"]) == pytest.approx([2 / 4])
    # order matters for L but not for 1
    assert rouge_l_recall(["mat the cat"], ["the cat mat"]) == pytest.approx([2 / 3])
    assert rouge1_recall(["mat the cat"], ["the cat mat"]) == pytest.approx([1.0])
    with pytest.raises(ValueError):
        rouge_l_recall(["a"], ["a", "b"])


def test_min_k_hand_computed():
    lp = [-1.0, -5.0, -2.0, -3.0, -0.5]
    # k = 0.4 of 5 tokens: the 2 lowest (-5, -3) -> -mean = 4; k = 0.2: 1 token -> 5
    assert min_k_scores([lp]) == pytest.approx([4.0])
    assert min_k_scores([lp], k=0.2) == pytest.approx([5.0])
    # int(2 * 0.4) = 0 -> at least one token; an empty answer scores 0 (as open-unlearning)
    assert min_k_scores([[-1.0, -2.0], []]) == pytest.approx([2.0, 0.0])
    # padded tensor + mask; padding values (even NaN) are ignored
    padded = torch.tensor([lp + [float("nan")], [-4.0, -0.1, -0.2, -9.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 1, 0, 0, 0]], dtype=torch.bool)
    assert min_k_scores(padded, mask) == pytest.approx([4.0, 4.0])


def test_mia_auc_direction_and_sklearn():
    members, non = np.array([0.1, 0.2, 0.3]), np.array([0.5, 0.9])  # members have lower loss
    assert mia_auc(members, non, higher_is_member=False) == 1.0
    assert mia_auc(-members, -non, higher_is_member=True) == 1.0
    assert mia_auc(members, non, higher_is_member=True) == 0.0
    same = np.array([0.3, 0.7, 0.5])
    assert mia_auc(same, same, higher_is_member=False) == 0.5
    rng = np.random.default_rng(0)
    a, b = rng.normal(0, 1, 30), rng.normal(0.5, 1, 20)
    # open-unlearning mia/utils.py: labels forget 0, holdout 1, loss-like scores
    ou = roc_auc_score([0] * 30 + [1] * 20, np.r_[a, b])
    assert mia_auc(torch.tensor(a), b, higher_is_member=False) == pytest.approx(ou)
    assert mia_auc(a, b, higher_is_member=True) == pytest.approx(roc_auc_score([1] * 30 + [0] * 20, np.r_[a, b]))
    assert mia_auc(a, b, higher_is_member=True) == pytest.approx(1 - ou)
    # Mann-Whitney by hand: P(member loss < non-member loss)
    assert ou == pytest.approx(np.mean(a[:, None] < b[None, :]))


def test_privleak():
    assert privleak(0.5) == pytest.approx(0.0)
    assert privleak(0.75, 0.5) == pytest.approx(-50.0)


def test_invalid_inputs_are_refused():
    with pytest.raises(ValueError, match="token"):
        normalized_probability([-1.0], [0])
    with pytest.raises(ValueError, match="NLL"):
        normalized_probability([2.0], [2])  # an NLL passed for log p
    with pytest.raises(ValueError):
        truth_ratio([-1.0, -2.0], [1, 1], [[-1.0, -1.0]], [[1, 1]])
    with pytest.raises(ValueError):
        forget_quality([], [0.1])
    with pytest.raises(ValueError):
        forget_quality([float("nan")], [0.1])
