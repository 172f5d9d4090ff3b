"""Scaling laws of forgetting (pure functions: numbers in, fitted parameters out).

Kalajdzievski (2024), "Scaling Laws for Forgetting When Fine-Tuning Large Language Models" (arXiv:2401.05605v1,
§4.1), finds for LoRA fine-tuning of Llama 2 7B chat:

* forgetting is a *shifted power law* in the number of fine-tuned parameters ``P`` and update steps ``N``
  (Eq. 6), which we fit as ``L_f(P, N) = A * (P**alpha * N)**beta + E``: ``beta`` is the exponent in steps and
  ``alpha * beta`` the exponent in parameters (the paper reports alpha_f ≈ 0.035, beta_f ≈ 0.147 on OpenOrca);
  ``E`` is the shift;
* forgetting is *inversely linear* in the fine-tuning loss (Eq. 4): ``L_f = -c * L_ft + s`` (c ≈ 1.73,
  s ≈ 2.05 on OpenOrca; R² .945).

:func:`fit_forgetting_law` fits the first by non-linear least squares on the forgetting values themselves
(``scipy.optimize.curve_fit``, trust-region reflective), started from a least-squares fit in log space profiled
over the shift. Why not log space alone: with the shift ``E`` unknown, ``log F`` is not linear in the
parameters, ``log(F - E)`` needs ``F > E`` at every point, and a measured forgetting (an increase of
cross-entropy) has roughly additive noise and can be ~0 or negative after few steps, where a log-space fit would
put the most weight on the least reliable points; the paper's R² are on the loss scale too. Standard errors come
from the fit's covariance (residual-variance scaled) and the delta method for ``alpha = (alpha*beta) / beta``.
:func:`fit_linear_relation` fits the second by ordinary least squares (``scipy.stats.linregress``) with Pearson
and Spearman correlations. scipy is imported inside the functions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

MIN_POINTS = 5  # four parameters + one degree of freedom


@dataclass(frozen=True)
class PowerLawFit:
    """``F(P, N) = A * (P**alpha * N)**beta + E`` fitted to forgetting values.

    Attributes:
        params: ``A``, ``alpha``, ``beta``, ``E`` and the exponents ``exponent_P = alpha * beta``,
            ``exponent_N = beta`` (``F - E = A * P**exponent_P * N**exponent_N``).
        stderr: their standard errors (NaN where the covariance is undefined).
        rmse, r2, n_fit: fit error on the points fitted.
        holdout_rmse, holdout_r2, n_holdout: the same on the held-out points (NaN / 0 without any).
        method: how it was fitted.
    """

    params: dict[str, float]
    stderr: dict[str, float]
    rmse: float
    r2: float
    n_fit: int
    holdout_rmse: float = math.nan
    holdout_r2: float = math.nan
    n_holdout: int = 0
    method: str = ""
    residuals: list[float] = field(default_factory=list)

    def predict(self, P, N) -> np.ndarray:
        """The fitted law at parameters ``P`` and steps ``N`` (broadcast)."""
        p = self.params
        return power_law(np.asarray(P, dtype=float), np.asarray(N, dtype=float), p["A"], p["exponent_P"],
                         p["exponent_N"], p["E"])  # fmt: skip

    def to_dict(self) -> dict:
        return asdict(self)


def power_law(P: np.ndarray, N: np.ndarray, A: float, gamma: float, beta: float, E: float) -> np.ndarray:
    """``A * P**gamma * N**beta + E`` (``gamma = alpha * beta``)."""
    return A * np.exp(gamma * np.log(P) + beta * np.log(N)) + E


def _array(name: str, values, positive: bool = False) -> np.ndarray:
    try:
        out = np.asarray(values, dtype=float)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a sequence of numbers, got {values!r}") from None
    if out.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {out.shape}")
    if not np.all(np.isfinite(out)):
        raise ValueError(f"{name} has non-finite values at positions {np.flatnonzero(~np.isfinite(out)).tolist()}")
    if positive and np.any(out <= 0):
        raise ValueError(f"{name} must be positive (a count of parameters / steps), got {out[out <= 0].tolist()}")
    return out


def _r2(y: np.ndarray, pred: np.ndarray) -> float:
    total = float(np.sum((y - y.mean()) ** 2))
    return 1.0 - float(np.sum((y - pred) ** 2)) / total if total > 0 else math.nan


def _rmse(y: np.ndarray, pred: np.ndarray) -> float:
    return float(np.sqrt(np.mean((y - pred) ** 2))) if len(y) else math.nan


def _log_space_start(P: np.ndarray, N: np.ndarray, F: np.ndarray) -> tuple[float, float, float, float]:
    """Starting values: for each shift ``E`` below ``min(F)``, least squares of ``log(F - E)`` on
    ``[1, log P, log N]``; the shift whose back-transformed fit has the smallest squared error wins."""
    X = np.column_stack([np.ones_like(P), np.log(P), np.log(N)])
    span = max(float(F.max() - F.min()), 1e-12)
    best, best_sse = None, math.inf
    for delta in span * np.logspace(-3, 2, 61):
        E = float(F.min()) - delta
        coef, *_ = np.linalg.lstsq(X, np.log(F - E), rcond=None)
        pred = power_law(P, N, math.exp(coef[0]), coef[1], coef[2], E)
        sse = float(np.sum((F - pred) ** 2))
        if np.isfinite(sse) and sse < best_sse:
            best, best_sse = (coef[0], coef[1], coef[2], E), sse
    return best


def fit_forgetting_law(P: Sequence[float], N: Sequence[float], F: Sequence[float], *, holdout=None) -> PowerLawFit:
    """Fit ``F = A * (P**alpha * N)**beta + E`` (Kalajdzievski 2024, Eq. 6) to forgetting ``F`` measured after
    ``N`` optimiser steps with ``P`` fine-tuned parameters.

    Args:
        P, N: positive numbers of fine-tuned parameters and of update steps, one per point.
        F: forgetting at each point (e.g. the increase of base-corpus cross-entropy).
        holdout: optional boolean mask of points left out of the fit and scored afterwards.

    Raises:
        ValueError: mismatched lengths, non-finite values, non-positive ``P`` / ``N``, fewer than 5 points to
            fit, fewer than two distinct values of ``P`` or of ``N`` among them, or constant ``F``.
    """
    P, N, F = _array("P", P, positive=True), _array("N", N, positive=True), _array("F", F)
    if not len(P) == len(N) == len(F):
        raise ValueError(f"P, N and F must have the same length, got {len(P)}, {len(N)} and {len(F)}")
    mask = np.zeros(len(F), dtype=bool) if holdout is None else np.asarray(holdout, dtype=bool)
    if mask.shape != F.shape:
        raise ValueError(f"holdout must be a boolean mask of length {len(F)}, got shape {mask.shape}")
    fit = ~mask
    if fit.sum() < MIN_POINTS:
        raise ValueError(f"the fit needs at least {MIN_POINTS} points (4 parameters), got {int(fit.sum())}")
    for name, values in (("P", P), ("N", N)):
        if len(np.unique(values[fit])) < 2:
            raise ValueError(f"{name} takes one value only among the fitted points: its exponent is not identifiable")
    if np.ptp(F[fit]) == 0:
        raise ValueError("F is constant: there is no trend to fit")
    from scipy.optimize import curve_fit

    Pf, Nf, Ff = P[fit], N[fit], F[fit]
    start = _log_space_start(Pf, Nf, Ff)

    def model(X, log_A, gamma, beta, E):
        return power_law(X[0], X[1], np.exp(log_A), gamma, beta, E)

    method = "scipy.optimize.curve_fit (trf) on F, started from a log-space fit profiled over E"
    try:
        theta, cov = curve_fit(model, np.vstack([Pf, Nf]), Ff, p0=start, method="trf", maxfev=20000)
    except (RuntimeError, ValueError) as err:  # no convergence: keep the log-space start, say so
        theta, cov = np.asarray(start, dtype=float), np.full((4, 4), np.nan)
        method = f"log-space fit profiled over E (curve_fit failed: {err})"
    log_A, gamma, beta, E = (float(v) for v in theta)
    cov = np.asarray(cov, dtype=float)
    if cov.shape != (4, 4) or not np.all(np.isfinite(cov)):
        cov = np.full((4, 4), np.nan)
    se = np.sqrt(np.clip(np.diag(cov), 0, None))
    A = math.exp(log_A)
    alpha = gamma / beta if beta != 0 else math.nan
    # delta method: alpha = gamma / beta; A = exp(log_A)
    grad = np.array([1 / beta, -gamma / beta**2]) if beta != 0 else np.full(2, np.nan)
    var_alpha = float(grad @ cov[np.ix_([1, 2], [1, 2])] @ grad)
    params = {"A": A, "alpha": alpha, "beta": beta, "E": E, "exponent_P": gamma, "exponent_N": beta}
    stderr = {
        "A": A * float(se[0]),
        "alpha": math.sqrt(var_alpha) if var_alpha >= 0 else math.nan,
        "beta": float(se[2]),
        "E": float(se[3]),
        "exponent_P": float(se[1]),
        "exponent_N": float(se[2]),
    }
    pred = power_law(P, N, A, gamma, beta, E)
    return PowerLawFit(
        params=params,
        stderr=stderr,
        rmse=_rmse(Ff, pred[fit]),
        r2=_r2(Ff, pred[fit]),
        n_fit=int(fit.sum()),
        holdout_rmse=_rmse(F[mask], pred[mask]),
        holdout_r2=_r2(F[mask], pred[mask]) if mask.sum() > 1 else math.nan,
        n_holdout=int(mask.sum()),
        method=method,
        residuals=(F - pred).tolist(),
    )


def fit_linear_relation(x: Sequence[float], y: Sequence[float]) -> dict[str, float]:
    """Ordinary least squares ``y = slope * x + intercept`` with standard errors, Pearson ``r`` (and its
    two-sided p-value), ``r2``, Spearman ``rho`` and ``n``; ``c = -slope``, ``s = intercept`` in the notation of
    Kalajdzievski (2024, Eq. 4: ``L_f = -c * L_ft + s``, x the fine-tuning loss, y the forgetting).

    Raises:
        ValueError: mismatched lengths, non-finite values, fewer than 3 points, or a constant ``x``.
    """
    x, y = _array("x", x), _array("y", y)
    if len(x) != len(y):
        raise ValueError(f"x and y must have the same length, got {len(x)} and {len(y)}")
    if len(x) < 3:
        raise ValueError(f"a line with a standard error needs at least 3 points, got {len(x)}")
    if np.ptp(x) == 0:
        raise ValueError("x is constant: the slope is not identifiable")
    from scipy import stats

    line = stats.linregress(x, y)
    rho = stats.spearmanr(x, y).statistic if np.ptp(y) > 0 else math.nan
    return {
        "slope": float(line.slope),
        "intercept": float(line.intercept),
        "slope_stderr": float(line.stderr),
        "intercept_stderr": float(line.intercept_stderr),
        "c": -float(line.slope),
        "s": float(line.intercept),
        "r": float(line.rvalue),
        "p_value": float(line.pvalue),
        "r2": float(line.rvalue**2),
        "spearman_rho": float(rho),
        "n": len(x),
    }


__all__ = ["PowerLawFit", "fit_forgetting_law", "fit_linear_relation", "power_law"]
