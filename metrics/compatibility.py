"""Retrieval and compatibility metrics (BCT: Shen et al. 2020; CL2R / CoReS: Biondi et al. 2023).

``M[i, j]`` (compatibility matrix) is a retrieval score of queries embedded by model ``i``
against a gallery embedded by model ``j <= i``; the diagonal is the self-test of each model.
All functions are pure: tensors / arrays in, floats or arrays out.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


def similarity(queries: Tensor, gallery: Tensor, metric: str = "cosine") -> Tensor:
    """``(Q, G)`` similarities: cosine, or negative squared Euclidean distance."""
    if metric == "cosine":
        return F.normalize(queries.float(), dim=1) @ F.normalize(gallery.float(), dim=1).T
    if metric == "euclidean":
        return -torch.cdist(queries.float(), gallery.float()).pow(2)
    raise ValueError(f"metric={metric!r} is invalid; valid choices: cosine, euclidean")


def rank1(sim: Tensor, q_labels: Tensor, g_labels: Tensor) -> float:
    """Fraction of queries whose most similar gallery item has the query's label."""
    return float((g_labels[sim.argmax(1)] == q_labels).float().mean())


def mean_average_precision(sim: Tensor, q_labels: Tensor, g_labels: Tensor) -> float:
    """mAP: for each query, the mean of precision@k over the ranks k of its relevant gallery items
    (same label), averaged over queries that have at least one relevant item."""
    order = sim.argsort(dim=1, descending=True, stable=True)
    rel = (g_labels[order] == q_labels[:, None]).float()
    hits = rel.cumsum(1)
    ranks = torch.arange(1, rel.shape[1] + 1, dtype=rel.dtype, device=rel.device)
    n_rel = rel.sum(1)
    ap = (rel * hits / ranks).sum(1) / n_rel.clamp(min=1)
    return float(ap[n_rel > 0].mean()) if bool((n_rel > 0).any()) else 0.0


def compatibility_matrix(
    query_feats: list[Tensor],
    gallery_feats: list[Tensor],
    q_labels: Tensor,
    g_labels: Tensor,
    score: str = "rank1",
    metric: str = "cosine",
) -> np.ndarray:
    """Lower-triangular ``(T, T)`` matrix: ``M[i, j]`` = ``score`` of model-``i`` queries vs model-``j`` gallery."""
    fn = rank1 if score == "rank1" else mean_average_precision
    T = len(query_feats)
    M = np.full((T, T), np.nan)
    for i in range(T):
        for j in range(i + 1):
            M[i, j] = fn(similarity(query_feats[i], gallery_feats[j], metric), q_labels, g_labels)
    return M


def ecc(M: np.ndarray, i: int, j: int, strict: bool = True) -> bool:
    """Empirical Compatibility Criterion: new model ``i`` is compatible with old model ``j < i`` if
    its queries against the old gallery beat the old model's self-test, ``M[i, j] > M[j, j]``.
    ``strict=False`` also accepts a tie (as the CL2R code does; saturated self-tests tie at 100%)."""
    return bool(M[i, j] > M[j, j]) if strict else bool(M[i, j] >= M[j, j])


def ecc_matrix(M: np.ndarray, strict: bool = True) -> np.ndarray:
    """Boolean matrix of :func:`ecc` for every pair ``j < i`` (False elsewhere)."""
    T = len(M)
    return np.array([[j < i and ecc(M, i, j, strict) for j in range(T)] for i in range(T)], dtype=bool)


def average_compatibility(M: np.ndarray, strict: bool = True) -> float:
    """AC: fraction of the ``T(T-1)/2`` pairs ``j < i`` that satisfy the ECC (1.0 for a single model)."""
    T = len(M)
    pairs = T * (T - 1) / 2
    return float(ecc_matrix(M, strict).sum() / pairs) if pairs else 1.0


def average_multimodel_accuracy(M: np.ndarray) -> float:
    """AM: mean of ``M[i, j]`` over ``j <= i`` (every model's queries against every earlier gallery)."""
    return float(np.mean(M[np.tril_indices(len(M))]))


def update_gain(M: np.ndarray, i: int, j: int) -> float:
    """BCT update gain ``(M[i,j] - M[j,j]) / (M[i,i] - M[j,j])``: the share of the full upgrade's
    improvement obtained without re-indexing the gallery (nan when the upgrade gains nothing)."""
    denom = M[i, i] - M[j, j]
    return float((M[i, j] - M[j, j]) / denom) if denom != 0 else float("nan")


__all__ = [
    "average_compatibility",
    "average_multimodel_accuracy",
    "compatibility_matrix",
    "ecc",
    "ecc_matrix",
    "mean_average_precision",
    "rank1",
    "similarity",
    "update_gain",
]
