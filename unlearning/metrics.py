"""Unlearning metrics: pure functions (tensors / arrays in, floats out).

Accuracy and gap to the retrain oracle, KL / JS divergence between output distributions,
membership-inference AUC (loss or entropy as the attack score), relearning steps, linear-probe and
k-NN accuracy from frozen features, and linear CKA between representations.
Oracle-relative functions raise :class:`OracleUnavailableError` when given no oracle value.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


class OracleUnavailableError(RuntimeError):
    """An oracle-relative metric was asked for without a retrain oracle."""

    def __init__(self, metric: str, reason: str = "no oracle was computed"):
        super().__init__(
            f"metric {metric!r} is relative to the retrain oracle, which is unavailable ({reason}); enable it with "
            "evaluators=[{name: unlearning, oracle: true}] "
            "(the oracle retrains the same config without the forgotten data)"
        )


def accuracy(logits: Tensor, y: Tensor) -> float:
    """Fraction of samples whose arg-max logit is the label (nan on empty input)."""
    return float((logits.argmax(1) == y).float().mean()) if len(y) else float("nan")


def gap(value: float, oracle_value: float | None, metric: str = "gap") -> float:
    """|value − oracle value| (e.g. forget accuracy of the unlearned model vs the oracle's)."""
    if oracle_value is None:
        raise OracleUnavailableError(metric)
    return abs(float(value) - float(oracle_value))


def average_gap(
    values: Mapping[str, float],
    oracle_values: Mapping[str, float] | None,
    keys: Sequence[str] = ("forget", "retain", "test"),
) -> float:
    """Mean of the gaps to the oracle over ``keys`` (forget / retain / test accuracy)."""
    if oracle_values is None:
        raise OracleUnavailableError("average_gap")
    return float(np.mean([gap(values[k], oracle_values.get(k), f"gap/{k}") for k in keys]))


def kl_divergence(p_logits: Tensor, q_logits: Tensor) -> float:
    """Mean over samples of KL(P ‖ Q) (nats), P = softmax(p_logits), Q = softmax(q_logits)."""
    if p_logits is None or q_logits is None:
        raise OracleUnavailableError("kl")
    logp, logq = F.log_softmax(p_logits.double(), 1), F.log_softmax(q_logits.double(), 1)
    return float((logp.exp() * (logp - logq)).sum(1).mean())


def js_divergence(p_logits: Tensor, q_logits: Tensor) -> float:
    """Mean Jensen–Shannon divergence (nats, in [0, ln 2]) between the two output distributions."""
    if p_logits is None or q_logits is None:
        raise OracleUnavailableError("js")
    p, q = F.softmax(p_logits.double(), 1), F.softmax(q_logits.double(), 1)
    m = 0.5 * (p + q)
    kl = lambda a: (torch.xlogy(a, a) - torch.xlogy(a, m)).sum(1)  # noqa: E731
    return float((0.5 * kl(p) + 0.5 * kl(q)).mean())


def per_sample_loss(logits: Tensor, y: Tensor) -> Tensor:
    return F.cross_entropy(logits.double(), y, reduction="none")


def entropy(logits: Tensor) -> Tensor:
    logp = F.log_softmax(logits.double(), 1)
    return -(logp.exp() * logp).sum(1)


def mia_auc(member_scores: Tensor | np.ndarray, nonmember_scores: Tensor | np.ndarray) -> float:
    """ROC AUC of an attack that calls a sample a training member when its score is high.
    0.5: members and non-members are indistinguishable. Scores: −loss or −entropy."""
    from sklearn.metrics import roc_auc_score

    a, b = np.asarray(member_scores, dtype=float), np.asarray(nonmember_scores, dtype=float)
    labels = np.r_[np.ones(len(a)), np.zeros(len(b))]
    return float(roc_auc_score(labels, np.r_[a, b]))


def loss_mia_auc(logits_members: Tensor, y_members: Tensor, logits_non: Tensor, y_non: Tensor) -> float:
    """Loss attack: members have lower loss (score = −loss)."""
    return mia_auc(-per_sample_loss(logits_members, y_members), -per_sample_loss(logits_non, y_non))


def entropy_mia_auc(logits_members: Tensor, logits_non: Tensor) -> float:
    """Entropy attack: members get more confident predictions (score = −entropy)."""
    return mia_auc(-entropy(logits_members), -entropy(logits_non))


def steps_to_reach(curve: Sequence[float], target: float) -> int | None:
    """First index i with curve[i] >= target (curve[i]: accuracy after i relearning steps); None if never."""
    for i, v in enumerate(curve):
        if v >= target:
            return i
    return None


def linear_probe_accuracy(train_x: Tensor, train_y: Tensor, test_x: Tensor, test_y: Tensor, seed: int = 0) -> float:
    """Accuracy on ``test`` of a logistic-regression probe fit on frozen ``train`` features."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(np.asarray(train_x, dtype=float))
    clf = LogisticRegression(max_iter=500, random_state=seed)
    clf.fit(scaler.transform(np.asarray(train_x, dtype=float)), np.asarray(train_y))
    return float((clf.predict(scaler.transform(np.asarray(test_x, dtype=float))) == np.asarray(test_y)).mean())


def knn_accuracy(train_x: Tensor, train_y: Tensor, test_x: Tensor, test_y: Tensor, k: int = 5) -> float:
    """k-NN (Euclidean, majority vote, ties → the smallest label) accuracy on frozen features."""
    train_x, test_x = torch.as_tensor(train_x, dtype=torch.float64), torch.as_tensor(test_x, dtype=torch.float64)
    train_y, test_y = torch.as_tensor(train_y), torch.as_tensor(test_y)
    k = min(k, len(train_y))
    nn_idx = torch.cdist(test_x, train_x).topk(k, largest=False).indices
    votes = F.one_hot(train_y[nn_idx], int(train_y.max()) + 1).sum(1)
    return float((votes.argmax(1) == test_y).float().mean())


def linear_cka(x: Tensor, y: Tensor) -> float:
    """Linear CKA (Kornblith et al. 2019) between two representations of the same n samples:
    ‖Yᶜᵀ Xᶜ‖²_F / (‖Xᶜᵀ Xᶜ‖_F ‖Yᶜᵀ Yᶜ‖_F) with column-centred X, Y (any widths)."""
    x = torch.as_tensor(x, dtype=torch.float64).flatten(1)
    y = torch.as_tensor(y, dtype=torch.float64).flatten(1)
    x, y = x - x.mean(0), y - y.mean(0)
    if x.shape[1] + y.shape[1] > 2 * len(x):  # wide (conv) activations: the same sums via n x n Gram matrices,
        kx, ky = x @ x.T, y @ y.T  # not d x d products (300 samples x 32k features: 9 GB each)
        num, den = (kx * ky).sum(), kx.norm() * ky.norm()
    else:
        num = (y.T @ x).pow(2).sum()
        den = (x.T @ x).norm() * (y.T @ y).norm()
    return float(num / den) if den > 0 else float("nan")
