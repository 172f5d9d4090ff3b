"""TOFU metrics for LLM unlearning, from per-sample quantities the caller already has.

TOFU (Maini et al. 2024, "TOFU: A Task of Fictitious Unlearning for LLMs") scores an unlearned model by

* **forget quality**: the p-value of a two-sample Kolmogorov-Smirnov test between the per-sample truth ratios
  of the unlearned model and of the retain-only model ("oracle"), both on the forget set (higher: closer);
* **model utility**: the harmonic mean of nine numbers, (probability, ROUGE-L recall, truth-ratio score) on each
  of the retain, real-authors and world-facts sets.

Everything here is a pure function of numbers: the caller runs the model and passes, per question, the **sum** of
the answer tokens' log-probabilities ``log p(a|q)`` and the number of answer tokens ``|a|`` (the tokens whose label
is not ignored; both references count them as ``(labels != -100).sum()``), or generated / reference strings for
ROUGE. Arrays may be numpy arrays, torch tensors (any device / dtype) or lists; results are numpy arrays or floats.

The definitions follow the reference code, checked line by line:

* ``locuslab/tofu``: ``evaluate_util.py`` (``get_all_evals``, ``eval_perturbation_ratio``, ``eval_rouge_recall``)
  and ``aggregate_eval_stat.py`` (``get_model_utility``, ``get_forget_quality``);
* ``locuslab/open-unlearning``: ``src/evals/metrics/memorization.py`` (``probability``, ``probability_w_options``,
  ``truth_ratio``), ``utils.py`` (``evaluate_probability``, ``eval_text_similarity``), ``privacy.py``
  (``ks_test``, ``privleak``), ``utility.py`` (``hm_aggregate``), ``mia/`` (``loss.py``, ``min_k.py``, ``utils.py``)
  and the metric configs ``configs/eval/tofu_metrics/*.yaml`` (which set uses which aggregator, ``k`` of Min-K).

Membership-inference scores follow open-unlearning's sign convention: every attack score is "loss-like"
(higher = less likely a member), and the AUC is 1 when the forget set looks much more like training data than the
holdout set (see :func:`mia_auc`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import stats

from clframe.unlearning import metrics as M

__all__ = [
    "forget_quality",
    "forget_quality_log10",
    "loss_scores",
    "mia_auc",
    "min_k_scores",
    "model_utility",
    "normalized_probability",
    "option_probability",
    "privleak",
    "rouge1_recall",
    "rouge_l_recall",
    "truth_ratio",
    "truth_ratio_closer_to_1_better",
    "truth_ratio_true_better",
]

EPS = 1e-10  # open-unlearning's guard in every ratio (memorization.py, privacy.py)


def _array(x: Any, name: str, allow_nan: bool = False) -> np.ndarray:
    """A float64 numpy array from a numpy array, torch tensor (detached, moved to CPU) or nested list."""
    if hasattr(x, "detach"):  # a torch tensor, without importing torch here
        x = x.detach().cpu().double().numpy()
    a = np.asarray(x, dtype=np.float64)
    if not allow_nan and np.isnan(a).any():
        raise ValueError(f"{name} contains NaN")
    return a


def _avg_nll(logp_sum: Any, n_tokens: Any, name: str = "logp_sum") -> np.ndarray:
    """Per-sample average token NLL ``-logp_sum / n_tokens`` (open-unlearning's ``avg_loss``)."""
    logp = _array(logp_sum, name)
    n = _array(n_tokens, f"{name} lengths")
    if (n <= 0).any():
        raise ValueError(f"{name}: every answer needs at least one token (got a token count <= 0)")
    if (logp > 1e-6).any():  # most likely an NLL passed for a log-probability
        raise ValueError(f"{name}: a sum of log-probabilities cannot be positive (pass log p, not the NLL)")
    try:
        n = np.broadcast_to(n, logp.shape)
    except ValueError:
        raise ValueError(f"{name}: token counts of shape {n.shape} do not match shape {logp.shape}") from None
    return -logp / n


def normalized_probability(logp_sum: Any, n_tokens: Any) -> np.ndarray:
    """Length-normalised answer probability ``p(a|q)^(1/|a|) = exp(logp_sum / n_tokens)``, per sample.

    TOFU's "Probability" on the forget and retain sets is the mean of these values. Reference: open-unlearning
    ``src/evals/metrics/utils.py::evaluate_probability`` (``prob = exp(-avg_loss)``) and
    ``memorization.py::probability``; TOFU ``aggregate_eval_stat.py::get_model_utility`` (``exp(-avg_gt_loss)``).
    """
    return np.exp(-_avg_nll(logp_sum, n_tokens))


def option_probability(logp_true: Any, len_true: Any, logp_options: Any, len_options: Any) -> np.ndarray:
    """TOFU's probability on real-authors / world-facts: the correct answer against the perturbed (wrong) ones.

    ``P = p_true / (p_true + sum_k p_k)`` per sample, where every ``p`` is **length-normalised**,
    ``p = exp(logp_sum / n_tokens)``; ``logp_options`` / ``len_options`` have shape (N, K) and hold the K wrong
    answers only (the correct one is added here). Report the mean over samples.

    Reference: open-unlearning ``src/evals/metrics/memorization.py::probability_w_options`` (configs
    ``ra_Q_A_Prob_normalised.yaml``, ``wf_Q_A_Prob_normalised.yaml``) and TOFU
    ``aggregate_eval_stat.py::get_model_utility``. Computed in log space,
    ``exp(l_true - logsumexp(l_true, l_1..l_K))``: equal to the reference up to its 1e-10 guard, without underflow.
    """
    l_true = -_avg_nll(logp_true, len_true, "logp_true")
    l_opts = -_avg_nll(logp_options, len_options, "logp_options")
    if l_true.ndim != 1 or l_opts.ndim != 2 or l_opts.shape[0] != l_true.shape[0]:
        raise ValueError(
            f"expected logp_true of shape (N,) and logp_options of shape (N, K), got {l_true.shape}, {l_opts.shape}"
        )
    all_l = np.concatenate([l_true[:, None], l_opts], axis=1)
    m = all_l.max(axis=1)
    log_norm = m + np.log(np.exp(all_l - m[:, None]).sum(axis=1))
    return np.exp(l_true - log_norm)


def truth_ratio(para_logp: Any, para_len: Any, pert_logp: Any, pert_len: Any) -> np.ndarray:
    """Per-sample truth ratio ``R = P_pert / P_para`` ("wrong over correct": lower means the model knows the answer).

    ``P_para = exp(-avg_nll_para)`` is the length-normalised probability of the paraphrased answer (forget / retain
    sets; on real-authors / world-facts TOFU uses the original answer here). ``P_pert`` is the **geometric** mean of
    the K perturbed answers' length-normalised probabilities, i.e. the mean is taken in log space::

        R = exp(avg_nll_para - mean_k avg_nll_pert_k),    avg_nll = -logp_sum / n_tokens

    ``pert_logp`` / ``pert_len`` have shape (N, K). Reference: TOFU ``evaluate_util.py::eval_perturbation_ratio``
    (``exp(gt_loss_per_token - perturb_loss_per_token.mean(-1))``); open-unlearning
    ``src/evals/metrics/memorization.py::truth_ratio`` (``wrong_prob / correct_prob`` with
    ``wrong_prob = exp(-mean_k avg_loss_k)``). Computed in log space (the reference adds 1e-10 to the denominator).
    """
    para = _avg_nll(para_logp, para_len, "para_logp")
    pert = _avg_nll(pert_logp, pert_len, "pert_logp")
    if para.ndim != 1 or pert.ndim != 2 or pert.shape[0] != para.shape[0]:
        raise ValueError(
            f"expected para_logp of shape (N,) and pert_logp of shape (N, K), got {para.shape}, {pert.shape}"
        )
    return np.exp(para - pert.mean(axis=1))


def truth_ratio_closer_to_1_better(tr: Any) -> float:
    """Forget-set truth-ratio score ``mean(min(R, 1 / R))`` (1: correct and wrong answers equally likely).

    The "forget_truth_ratio" TOFU reports (not part of model utility; forget quality uses the raw per-sample ``R``).
    Reference: open-unlearning ``memorization.py::truth_ratio`` aggregator ``closer_to_1_better``
    (``mean(minimum(R, 1 / (R + 1e-10)))``, config ``forget_Truth_Ratio.yaml``); TOFU ``get_model_utility``
    (``mean(minimum(c, 1 / c))`` with ``c = 1 / R``, the same number).
    """
    r = _array(tr, "truth ratio")
    return float(np.mean(np.minimum(r, 1.0 / (r + EPS))))


def truth_ratio_true_better(tr: Any) -> float:
    """Truth-ratio score on the retain, real-authors and world-facts sets: ``mean(max(0, 1 - R))`` (higher: better).

    One of the nine model-utility components. Reference: open-unlearning ``memorization.py::truth_ratio`` aggregator
    ``true_better`` (configs ``retain_Truth_Ratio.yaml``, ``ra_Truth_Ratio.yaml``, ``wf_Truth_Ratio.yaml``);
    TOFU ``get_model_utility`` (``mean(maximum(0, 1 - 1 / c))`` with ``c = 1 / R``).
    """
    r = _array(tr, "truth ratio")
    return float(np.mean(np.maximum(0.0, 1.0 - r)))


def _samples(x: Any, name: str) -> np.ndarray:
    a = _array(x, name).ravel()
    if a.size == 0:
        raise ValueError(f"{name} is empty")
    return a


def forget_quality(truth_ratio_unlearned: Any, truth_ratio_oracle: Any) -> float:
    """TOFU forget quality: the two-sided two-sample KS-test p-value between per-sample truth ratios.

    ``ks_2samp(R_unlearned, R_oracle).pvalue`` (scipy defaults: two-sided, ``method="auto"``), both computed on the
    forget set, the oracle being the model trained on the retain set only. 1: indistinguishable; TOFU plots it on a
    log scale (:func:`forget_quality_log10`). The KS statistic does not change under ``R -> 1 / R``, so passing the
    reciprocal ratios gives the same value. Reference: TOFU ``aggregate_eval_stat.py::get_forget_quality``;
    open-unlearning ``src/evals/metrics/privacy.py::ks_test`` (config ``forget_quality.yaml``).
    """
    a = _samples(truth_ratio_unlearned, "truth_ratio_unlearned")
    b = _samples(truth_ratio_oracle, "truth_ratio_oracle")
    return float(stats.ks_2samp(a, b).pvalue)


def forget_quality_log10(truth_ratio_unlearned: Any, truth_ratio_oracle: Any) -> float:
    """``log10`` of :func:`forget_quality` (``-inf`` if the p-value underflows to 0)."""
    p = forget_quality(truth_ratio_unlearned, truth_ratio_oracle)
    return float(np.log10(p)) if p > 0 else float("-inf")


def model_utility(values: Mapping[str, float] | Sequence[float] | Any) -> float:
    """TOFU model utility: the harmonic mean (``scipy.stats.hmean``) of the given metric values.

    TOFU passes nine values, for each of the retain, real-authors and world-facts sets: the probability (retain:
    mean :func:`normalized_probability`; real-authors / world-facts: mean :func:`option_probability`), the mean
    :func:`rouge_l_recall` and :func:`truth_ratio_true_better`. Any value 0 makes it 0; negative, NaN or no values
    raise ``ValueError``. A mapping (name -> value) names the offending entry. Reference: TOFU
    ``aggregate_eval_stat.py::get_model_utility``; open-unlearning ``src/evals/metrics/utility.py::hm_aggregate``
    (config ``model_utility.yaml``).
    """
    if isinstance(values, Mapping):
        names, vals = list(values), [values[k] for k in values]
    else:
        vals = list(_array(values, "model utility values").ravel())
        names = [str(i) for i in range(len(vals))]
    if not vals:
        raise ValueError("model_utility needs at least one value")
    arr = np.array([float(_array(v, f"model utility value {n!r}")) for n, v in zip(names, vals)])
    bad = [f"{n}={v}" for n, v in zip(names, arr) if not np.isfinite(v) or v < 0]
    if bad:
        raise ValueError(f"model_utility needs finite non-negative values, got {', '.join(bad)}")
    if (arr == 0).any():
        return 0.0
    return float(stats.hmean(arr))


def _rouge(predictions: Sequence[str], references: Sequence[str], rouge_type: str) -> np.ndarray:
    from rouge_score import rouge_scorer  # lazy: an optional dependency only the text metrics need

    if isinstance(predictions, str) or isinstance(references, str):
        raise TypeError("predictions and references must be sequences of strings, not a single string")
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    scorer = rouge_scorer.RougeScorer(["rouge1", "rougeL"], use_stemmer=True)
    return np.array([scorer.score(ref, pred)[rouge_type].recall for pred, ref in zip(predictions, references)])


def rouge_l_recall(predictions: Sequence[str], references: Sequence[str]) -> np.ndarray:
    """Per-sample ROUGE-L recall: ``LCS(prediction, reference) / len(reference)`` in (Porter-stemmed) tokens.

    ``rouge_scorer.RougeScorer(["rouge1", "rougeL"], use_stemmer=True).score(reference, prediction)["rougeL"].recall``,
    with rouge_score's default tokenizer (lower-case, non-alphanumerics dropped). TOFU's "ROUGE" is the mean over
    samples of greedy generations; cutting the generation at EOS / stop words and stripping is the caller's job.
    Reference: TOFU ``evaluate_util.py::eval_rouge_recall``; open-unlearning ``src/evals/metrics/utils.py::
    eval_text_similarity`` (``rouge_type: rougeL_recall`` in ``*_Q_A_ROUGE.yaml``).
    """
    return _rouge(predictions, references, "rougeL")


def rouge1_recall(predictions: Sequence[str], references: Sequence[str]) -> np.ndarray:
    """Per-sample ROUGE-1 recall (unigram overlap / reference unigrams), same scorer as :func:`rouge_l_recall`."""
    return _rouge(predictions, references, "rouge1")


def loss_scores(logp_sum: Any, n_tokens: Any) -> np.ndarray:
    """LOSS attack score: the average token NLL ``-logp_sum / n_tokens`` (higher = less likely a member).

    Use with ``mia_auc(..., higher_is_member=False)``. Reference: open-unlearning ``src/evals/metrics/mia/loss.py::
    LOSSAttack.compute_score`` (``avg_loss`` of ``utils.py::evaluate_probability``).
    """
    return _avg_nll(logp_sum, n_tokens)


def min_k_scores(token_logprobs: Any, mask: Any = None, k: float = 0.4) -> np.ndarray:
    """Min-K% Prob attack score (Shi et al. 2024), **negated** as in open-unlearning: higher = less likely a member.

    Per sample, with ``lp`` the answer tokens' log-probabilities (``n`` of them): ``-mean(lowest max(1, int(n * k))
    values of lp)``; an answer with no token scores 0 (as the reference). ``token_logprobs`` is (N, T) with a boolean
    ``mask`` (N, T) marking the answer tokens, or a sequence of 1-D arrays (``mask=None``). ``k = 0.4`` is the
    TOFU config's (``configs/eval/tofu_metrics/mia_min_k.yaml``; the class default is 0.2). Note that open-unlearning's
    ``utils.py::tokenwise_logprobs`` leaves out the last answer token (the EOS prediction): mask it out to match.
    Use with ``mia_auc(..., higher_is_member=False)``. Reference: open-unlearning ``src/evals/metrics/mia/min_k.py::
    MinKProbAttack.compute_score``.
    """
    if not 0 < k <= 1:
        raise ValueError(f"k must be in (0, 1], got {k}")
    if mask is None:
        rows = [_array(row, "token_logprobs").ravel() for row in token_logprobs]
    else:
        lp = _array(token_logprobs, "token_logprobs", allow_nan=True)  # padding may hold anything: checked below
        m = (mask.detach().cpu().numpy() if hasattr(mask, "detach") else np.asarray(mask)).astype(bool)
        if lp.ndim != 2 or m.shape != lp.shape:
            raise ValueError(f"token_logprobs {lp.shape} and mask {m.shape} must have the same 2-D shape")
        rows = [row[keep] for row, keep in zip(lp, m)]
    out = np.zeros(len(rows))
    for i, row in enumerate(rows):
        if np.isnan(row).any():
            raise ValueError("token_logprobs contains NaN at an answer token")
        if row.size:
            num_k = max(1, int(row.size * k))
            out[i] = -np.sort(row)[:num_k].mean()
    return out


def mia_auc(member_scores: Any, nonmember_scores: Any, higher_is_member: bool) -> float:
    """Membership-inference ROC AUC (``sklearn.metrics.roc_auc_score``): 1 = members perfectly recognised, 0.5 = chance.

    In TOFU the members are the forget set and the non-members the holdout set. open-unlearning
    (``src/evals/metrics/mia/utils.py::mia_auc``) labels forget 0 and holdout 1 and scores with loss-like attack
    scores (:func:`loss_scores`, :func:`min_k_scores`): that is ``higher_is_member=False`` here, which reproduces its
    call exactly; ``higher_is_member=True`` (e.g. log-likelihoods) labels the members 1 instead. Either way the
    result is ``P(a member looks more like a member than a non-member)``, ties counting half.
    """
    a = _samples(member_scores, "member_scores")
    b = _samples(nonmember_scores, "nonmember_scores")
    return M.mia_auc(a, b) if higher_is_member else M.mia_auc(-a, -b)  # flipping labels = negating scores


def privleak(auc_unlearned: float, auc_oracle: float = 0.5) -> float:
    """PrivLeak (MUSE; in TOFU's default open-unlearning eval, on Min-K AUC): relative AUC gap to the oracle, in %.

    ``((1 - auc) - (1 - auc_oracle)) / ((1 - auc_oracle) + 1e-10) * 100`` with AUCs in :func:`mia_auc`'s convention
    (0: like the retain-only model; negative: forget set still recognised). ``auc_oracle`` defaults to 0.5, the
    reference's ``ref_value`` when no retain-model log is given. Reference: open-unlearning
    ``src/evals/metrics/privacy.py::privleak`` (config ``privleak.yaml``).
    """
    score, ref = 1.0 - float(auc_unlearned), 1.0 - float(auc_oracle)
    return (score - ref) / (ref + EPS) * 100.0
