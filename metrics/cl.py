"""Continual-learning metrics on an accuracy matrix.

``R[i, j]`` is the accuracy on the test split of experience ``j`` after training on
experience ``i`` (rows: training steps, columns: evaluation experiences; the matrix is
square over the learning experiences and includes the upper triangle, i.e. future
experiences, which forward transfer needs). All functions are pure and accept any
array-like; ``t`` selects "after experience t" (default: the last one).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from clframe.registry import register_metric


def _as_matrix(R: Sequence[Sequence[float]] | np.ndarray) -> np.ndarray:
    R = np.asarray(R, dtype=float)
    if R.ndim != 2 or R.shape[0] > R.shape[1]:
        raise ValueError(f"accuracy matrix must be 2-D with rows <= columns, got shape {R.shape}")
    return R


def _step(R: np.ndarray, t: int | None) -> int:
    t = R.shape[0] - 1 if t is None else (t % R.shape[0])
    return t


def accuracy_matrix_from_rows(rows: Sequence[Sequence[float]]) -> np.ndarray:
    """Stack evaluation rows (one per training step) into ``R``."""
    return _as_matrix(rows)


@register_metric("avg_acc")
def average_accuracy(R, t: int | None = None) -> float:
    """Mean accuracy over experiences ``0..t`` after training on ``t``: ``mean_j<=t R[t, j]``."""
    R = _as_matrix(R)
    t = _step(R, t)
    return float(R[t, : t + 1].mean())


@register_metric("avg_inc_acc")
def average_incremental_accuracy(R, t: int | None = None) -> float:
    """Mean of :func:`average_accuracy` over steps ``0..t`` (Rebuffi et al., iCaRL)."""
    R = _as_matrix(R)
    t = _step(R, t)
    return float(np.mean([average_accuracy(R, i) for i in range(t + 1)]))


@register_metric("forgetting")
def forgetting(R, t: int | None = None) -> float:
    """Average maximum drop (Chaudhry et al. 2018): ``mean_{j<t} max_{l<t} R[l, j] - R[t, j]``
    over ``l`` in ``j..t-1``. Zero at ``t = 0``."""
    R = _as_matrix(R)
    t = _step(R, t)
    if t == 0:
        return 0.0
    drops = [R[j:t, j].max() - R[t, j] for j in range(t)]
    return float(np.mean(drops))


@register_metric("bwt")
def backward_transfer(R, t: int | None = None) -> float:
    """Backward transfer (Lopez-Paz & Ranzato 2017): ``mean_{j<t} R[t, j] - R[j, j]``; negative = forgetting."""
    R = _as_matrix(R)
    t = _step(R, t)
    if t == 0:
        return 0.0
    return float(np.mean([R[t, j] - R[j, j] for j in range(t)]))


@register_metric("fwt")
def forward_transfer(R, random_init: Sequence[float], t: int | None = None) -> float:
    """Forward transfer (Lopez-Paz & Ranzato 2017): ``mean_{0<j<=t} R[j-1, j] - b[j]``,
    ``b[j]`` the accuracy of the randomly initialised model on experience ``j``."""
    R = _as_matrix(R)
    b = np.asarray(random_init, dtype=float)
    if b.shape != (R.shape[1],):
        raise ValueError(f"random_init must have one entry per column of R ({R.shape[1]}), got {b.shape}")
    t = _step(R, t)
    if t == 0:
        return 0.0
    return float(np.mean([R[j - 1, j] - b[j] for j in range(1, t + 1)]))


def cl_summary(R, random_init: Sequence[float] | None = None) -> dict[str, float]:
    """Headline metrics under the keys written to ``metrics.json`` (``cl/...``)."""
    out = {
        "cl/avg_acc": average_accuracy(R),
        "cl/avg_inc_acc": average_incremental_accuracy(R),
        "cl/forgetting": forgetting(R),
        "cl/bwt": backward_transfer(R),
    }
    if random_init is not None:
        out["cl/fwt"] = forward_transfer(R, random_init)
    return out
