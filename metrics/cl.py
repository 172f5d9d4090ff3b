"""Continual-learning metrics on an accuracy matrix.

``R[i, j]`` is the accuracy on the test split of experience ``j`` after training on
experience ``i`` (rows: training steps, columns: evaluation experiences; the matrix is
square over the learning experiences and includes the upper triangle, i.e. future
experiences, which forward transfer needs). All functions are pure and accept any
array-like; ``t`` selects "after experience t" (default: the last one).

NaN in ``R[i, j]`` means "column ``j`` is not asked any more" (all its classes were
deliberately forgotten): such entries are ignored, and a metric with nothing left is NaN.
:func:`clframe.evaluation.retained_matrix` builds ``R`` from per-class counts without the forgotten classes,
so that deliberate unlearning is not counted as catastrophic forgetting.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from clframe.errors import ConfigError
from clframe.evaluation import retained_matrix
from clframe.registry import register_metric, register_summary

SETTINGS = ("class", "task", "domain")


def _as_matrix(R: Sequence[Sequence[float]] | np.ndarray) -> np.ndarray:
    R = np.asarray(R, dtype=float)
    if R.ndim != 2 or R.shape[0] > R.shape[1]:
        raise ValueError(f"accuracy matrix must be 2-D with rows <= columns, got shape {R.shape}")
    return R


def _step(R: np.ndarray, t: int | None) -> int:
    t = R.shape[0] - 1 if t is None else (t % R.shape[0])
    return t


def _nanmean(values: Iterable[float]) -> float:
    """Mean of the non-NaN values; NaN if there are none (without numpy's empty-slice warning)."""
    a = np.asarray(list(values), dtype=float)
    a = a[~np.isnan(a)]
    return float(a.mean()) if a.size else float("nan")


def accuracy_matrix_from_rows(rows: Sequence[Sequence[float]]) -> np.ndarray:
    """Stack evaluation rows (one per training step) into ``R``."""
    return _as_matrix(rows)


@register_metric("avg_acc")
def average_accuracy(R, t: int | None = None) -> float:
    """Mean accuracy over experiences ``0..t`` after training on ``t``: ``mean_j<=t R[t, j]`` (NaN ignored)."""
    R = _as_matrix(R)
    t = _step(R, t)
    return _nanmean(R[t, : t + 1])


@register_metric("avg_inc_acc")
def average_incremental_accuracy(R, t: int | None = None) -> float:
    """Mean of :func:`average_accuracy` over steps ``0..t`` (Rebuffi et al., iCaRL); NaN steps ignored."""
    R = _as_matrix(R)
    t = _step(R, t)
    return _nanmean(average_accuracy(R, i) for i in range(t + 1))


@register_metric("forgetting")
def forgetting(R, t: int | None = None) -> float:
    """Average maximum drop (Chaudhry et al. 2018): ``mean_{j<t} max_{l<t} R[l, j] - R[t, j]``
    over ``l`` in ``j..t-1``. Zero at ``t = 0``; columns NaN at row ``t`` are left out."""
    R = _as_matrix(R)
    t = _step(R, t)
    if t == 0:
        return 0.0
    drops = []
    for j in range(t):
        past = R[j:t, j][~np.isnan(R[j:t, j])]
        if past.size and not np.isnan(R[t, j]):
            drops.append(past.max() - R[t, j])
    return _nanmean(drops)


@register_metric("bwt")
def backward_transfer(R, t: int | None = None) -> float:
    """Backward transfer (Lopez-Paz & Ranzato 2017): ``mean_{j<t} R[t, j] - R[j, j]``; negative = forgetting.
    Columns NaN at row ``t`` (or on the diagonal) are left out."""
    R = _as_matrix(R)
    t = _step(R, t)
    if t == 0:
        return 0.0
    return _nanmean(R[t, j] - R[j, j] for j in range(t))


@register_metric("fwt")
def forward_transfer(R, random_init: Sequence[float], t: int | None = None) -> float:
    """Forward transfer (Lopez-Paz & Ranzato 2017): ``mean_{0<j<=t} R[j-1, j] - b[j]``,
    ``b[j]`` the accuracy of the randomly initialised model on experience ``j`` (NaN ignored).
    Meaningful only where :func:`fwt_undefined_reason` is None (domain-incremental)."""
    R = _as_matrix(R)
    b = np.asarray(random_init, dtype=float)
    if b.shape != (R.shape[1],):
        raise ValueError(f"random_init must have one entry per column of R ({R.shape[1]}), got {b.shape}")
    t = _step(R, t)
    if t == 0:
        return 0.0
    return _nanmean(R[j - 1, j] - b[j] for j in range(1, t + 1))


def fwt_undefined_reason(setting: str) -> str | None:
    """None where forward transfer is defined (domain-IL: the model can already predict a future
    experience's classes); otherwise the reason, written next to ``cl/fwt: null`` in ``metrics.json``."""
    if setting not in SETTINGS:
        raise ConfigError("scenario.setting", setting, SETTINGS)
    if setting == "domain":
        return None
    return (
        f"undefined in {setting}-incremental learning: the classes of an experience not learned yet are masked, "
        "so R[j-1, j] is 0 by construction and FWT reduces to minus the random-init accuracy"
    )


def undefined_metrics(setting: str) -> dict[str, str]:
    """``{metric key: reason}`` for the headline metrics that are not defined in ``setting``."""
    reason = fwt_undefined_reason(setting)
    return {} if reason is None else {"cl/fwt": reason}


def cl_summary(R, random_init: Sequence[float] | None = None, setting: str = "class") -> dict[str, float | None]:
    """Headline metrics under the keys written to ``metrics.json`` (``cl/...``).

    ``cl/fwt`` is None where it is undefined (see :func:`undefined_metrics`), and absent in
    domain-IL without ``random_init``.
    """
    out: dict[str, float | None] = {
        "cl/avg_acc": average_accuracy(R),
        "cl/avg_inc_acc": average_incremental_accuracy(R),
        "cl/forgetting": forgetting(R),
        "cl/bwt": backward_transfer(R),
    }
    if fwt_undefined_reason(setting) is not None:
        out["cl/fwt"] = None
    elif random_init is not None:
        out["cl/fwt"] = forward_transfer(R, random_init)
    return out


def curves(correct, total, removed_at: Sequence[Iterable[int]]) -> dict[str, list[float]]:
    """``cl/avg_acc`` and ``cl/forgetting`` after each learn step ``t``, each computed on
    ``retained_matrix(correct[:t+1], total[:t+1], removed_at[t])``: at every point in time, over
    what the stream still asks the model to know, for every row (``removed_at[t]``: classes
    deliberately forgotten before row ``t`` was evaluated)."""
    correct, total = np.asarray(correct, dtype=float), np.asarray(total, dtype=float)
    if len(removed_at) != len(correct):
        raise ValueError(f"removed_at needs one entry per row ({len(correct)}), got {len(removed_at)}")
    out: dict[str, list[float]] = {"cl/avg_acc": [], "cl/forgetting": []}
    for t, removed in enumerate(removed_at):
        R = retained_matrix(correct[: t + 1], total[: t + 1], removed)
        out["cl/avg_acc"].append(average_accuracy(R, t))
        out["cl/forgetting"].append(forgetting(R, t))
    return out


@register_summary("cl")
def cl_report(correct, total, removed_at: Sequence[Iterable[int]], random_init, setting: str) -> dict:
    """What ``metrics.json`` reports of the accuracy matrix: the headline ``cl/*`` metrics, their curves over
    the stream and the metrics undefined in ``setting`` (the runner's summary ``cl``; config key ``summaries``)."""
    out: dict = {"metrics": {}, "curves": {}, "undefined_metrics": undefined_metrics(setting)}
    if len(correct):
        R = retained_matrix(correct, total, removed_at[-1])
        out["metrics"] = cl_summary(R, random_init, setting=setting)
        out["curves"] = curves(correct, total, removed_at)
    return out
