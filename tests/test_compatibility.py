"""Compatibility metrics on hand-computed matrices; the retrieval evaluator and the simplex strategies."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from clframe.metrics import compatibility as C
from clframe.strategies.simplex import dsimplex
from tests.conftest import BLOBS

# M[i, j]: queries of model i vs gallery of model j (lower triangle)
M = np.array(
    [
        [0.50, np.nan, np.nan],
        [0.60, 0.70, np.nan],
        [0.40, 0.75, 0.80],
    ]
)


def test_ecc_ac_am_by_hand():
    assert C.ecc(M, 1, 0)  # 0.60 > 0.50
    assert not C.ecc(M, 2, 0)  # 0.40 < 0.50
    assert C.ecc(M, 2, 1)  # 0.75 > 0.70
    assert C.ecc_matrix(M).tolist() == [[False] * 3, [True, False, False], [False, True, False]]
    assert C.average_compatibility(M) == pytest.approx(2 / 3)
    assert C.average_multimodel_accuracy(M) == pytest.approx((0.5 + 0.6 + 0.7 + 0.4 + 0.75 + 0.8) / 6)
    assert C.update_gain(M, 2, 1) == pytest.approx((0.75 - 0.70) / (0.80 - 0.70))
    equal = np.array([[0.5, np.nan], [0.5, 0.9]])  # equality is not an improvement: ECC fails
    assert C.average_compatibility(equal) == 0.0
    assert C.average_compatibility(equal, strict=False) == 1.0
    assert C.average_compatibility(np.array([[0.3]])) == 1.0


def test_rank1_and_map_by_hand():
    q_labels, g_labels = torch.tensor([0, 1]), torch.tensor([0, 1, 0, 1])
    sim = torch.tensor(
        [
            [0.9, 0.8, 0.1, 0.2],  # query 0: ranks g0(+) g1 g3 g2(+): AP = (1/1 + 2/4) / 2 = 0.75
            [0.9, 0.1, 0.8, 0.7],
        ]
    )  # query 1: ranks g0 g2 g3(+) g1(+): AP = (1/3 + 2/4) / 2
    assert C.rank1(sim, q_labels, g_labels) == 0.5
    assert C.mean_average_precision(sim, q_labels, g_labels) == pytest.approx((0.75 + (1 / 3 + 0.5) / 2) / 2)


def test_compatibility_matrix_from_features():
    g_labels = q_labels = torch.tensor([0, 1])
    e = torch.eye(2)
    flipped = e.flip(0)  # a model whose features swap the classes: incompatible with the first
    M2 = C.compatibility_matrix([e, flipped], [e, flipped], q_labels, g_labels)
    assert M2[0, 0] == 1.0 and M2[1, 1] == 1.0 and M2[1, 0] == 0.0 and math.isnan(M2[0, 1])
    assert C.average_compatibility(M2) == 0.0


@pytest.mark.parametrize("k", [2, 3, 10])
def test_dsimplex_is_a_regular_simplex(k):
    v = dsimplex(k)
    assert v.shape == (k, k - 1)
    gram = v @ v.T
    assert torch.allclose(gram.diagonal(), torch.ones(k), atol=1e-6)
    off = gram[~torch.eye(k, dtype=bool)]
    assert torch.allclose(off, torch.full_like(off, -1 / (k - 1)), atol=1e-6)


@pytest.mark.parametrize("strategy", ["cores", "cl2r"])
def test_retrieval_evaluator_and_fixed_simplex(make_cfg, strategy, tmp_path):
    from clframe.runner import run

    res = run(
        make_cfg(
            *BLOBS, f"strategy={strategy}", "strategy.buffer_size=40", "+evaluators=[{name: retrieval}]", "plots=true"
        )
    )
    rows = [ev["retrieval"]["rank1"] for ev in res["evaluations"]]
    assert [len(r) for r in rows] == [1, 2, 3, 4, 5]  # row i: queries of model i vs galleries of models 0..i
    m = res["metrics"]
    # the headline values are the compatibility matrix's, recomputed here from the stored rows by hand
    M = [[*r, *[math.nan] * (5 - len(r))] for r in rows]
    pairs = [(i, j) for i in range(5) for j in range(i)]
    assert m["retrieval/ac"] == pytest.approx(np.mean([M[i][j] > M[j][j] for i, j in pairs]))
    assert m["retrieval/ac_ties"] == pytest.approx(np.mean([M[i][j] >= M[j][j] for i, j in pairs]))
    assert m["retrieval/am"] == pytest.approx(np.mean([M[i][j] for i in range(5) for j in range(i + 1)]))
    assert m["retrieval/final_rank1"] == rows[-1][-1]
    assert m["retrieval/am"] > 0.5 and m["retrieval/final_rank1"] > 0.8
    assert (tmp_path / "run0" / "plots" / "compatibility_matrix.png").is_file()
    final = torch.load(tmp_path / "run0" / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert torch.equal(final["head.prototypes"], dsimplex(10))  # the classifier never moved


# quickstart-like digits protocol, identical for all three methods; CoReS / CL2R add their memory
DIGITS = (
    "scenario=split_digits",
    "backbone.hidden=[128,128]",
    "strategy.lr=0.05",
    "strategy.momentum=0.9",
    "strategy.batch_size=32",
    "trainer.max_epochs=5",
    "+evaluators=[{name: retrieval}]",
)


def test_simplex_methods_are_more_compatible_than_naive(make_cfg):
    """CoReS and CL2R (fixed d-Simplex + memory) keep old galleries searchable by new models; naive
    fine-tuning does not. Means over seeds 0-2 measured (naive / CoReS / CL2R): strict AC 0.00 / 0.20 / 0.30,
    AC with ties 0.00 / 0.60 / 0.73, AM 0.52 / 0.90 / 0.89 (~1 s per run)."""
    from clframe.runner import run

    keys = ("retrieval/ac", "retrieval/ac_ties", "retrieval/am")
    mean = {}
    for strategy in ("naive", "cores", "cl2r"):
        memory = [] if strategy == "naive" else ["strategy.buffer_size=100"]
        runs = [run(make_cfg(*DIGITS, f"strategy={strategy}", f"seed={s}", *memory))["metrics"] for s in range(3)]
        mean[strategy] = {k: np.mean([m[k] for m in runs]) for k in keys}
    for strategy in ("cores", "cl2r"):
        assert mean[strategy]["retrieval/ac"] > mean["naive"]["retrieval/ac"], mean
        assert mean[strategy]["retrieval/ac_ties"] >= mean["naive"]["retrieval/ac_ties"] + 0.3, mean
        assert mean[strategy]["retrieval/am"] >= mean["naive"]["retrieval/am"] + 0.2, mean
