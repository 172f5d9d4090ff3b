"""The ``retrieval`` evaluator: compatibility of representations across model updates.

Enable with ``evaluators=[{name: retrieval}]``. The test splits of all learn experiences are
split once (seeded, per class) into queries and a gallery. After every event, the current model
embeds both; its gallery embedding is kept, and its queries are searched against the galleries
embedded by every earlier model: row ``i`` of the compatibility matrix (rank-1 and mAP).
``classes="seen"`` (default): gallery ``j`` holds the images of the classes learned up to event
``j`` (what a search system would have indexed then) and ``M[i, j]`` uses queries of those
classes, so ``M[i, j]`` and the self-test ``M[j, j]`` compare the same search task.
``classes="all"``: one fixed query/gallery set of every class for all entries (authors' code,
where it is a held-out data set no model trains on).
``finalize`` returns ``retrieval/ac`` (Average Compatibility), ``retrieval/am`` (Average
Multi-model accuracy, rank-1), ``retrieval/am_map`` and writes ``plots/compatibility_matrix.png``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from clframe.errors import ConfigError
from clframe.evaluation import Evaluator
from clframe.metrics import compatibility as C
from clframe.plots import _save
from clframe.registry import register_evaluator
from clframe.stream import TensorData


@torch.no_grad()
def embed(strategy, x: torch.Tensor, device: torch.device, batch_size: int = 1024) -> torch.Tensor:
    """``strategy.features`` of ``x`` in eval mode, batched, returned on the CPU."""
    strategy.eval().to(device)
    return torch.cat(
        [strategy.features(x[i : i + batch_size].to(device)).float().cpu() for i in range(0, len(x), batch_size)]
    )


def split_queries(y: torch.Tensor, query_fraction: float, max_queries: int, max_gallery: int, seed: int):
    """Per-class seeded split of indices into (queries, gallery), then capped by random subsampling."""
    gen = torch.Generator().manual_seed(seed)
    q, g = [], []
    for c in torch.unique(y).tolist():
        idx = (y == c).nonzero().squeeze(1)
        idx = idx[torch.randperm(len(idx), generator=gen)]
        n_q = max(1, int(round(query_fraction * len(idx))))
        q.append(idx[:n_q]), g.append(idx[n_q:])
    q, g = torch.cat(q), torch.cat(g)
    q = q[torch.randperm(len(q), generator=gen)[:max_queries]].sort().values
    g = g[torch.randperm(len(g), generator=gen)[:max_gallery]].sort().values
    return q, g


@register_evaluator("retrieval")
class RetrievalEvaluator(Evaluator):
    """Rank-1 / mAP of new-model queries against galleries indexed by every earlier model."""

    def __init__(
        self,
        *,
        query_fraction: float = 0.2,
        max_queries: int = 1000,
        max_gallery: int = 3000,
        metric: str = "cosine",
        classes: str = "seen",
        seed: int = 0,
    ):
        if classes not in ("seen", "all"):
            raise ConfigError("evaluators.retrieval.classes", classes, ["seen", "all"])
        if not 0 < query_fraction < 1:
            raise ConfigError("evaluators.retrieval.query_fraction", query_fraction, "a number in (0, 1)")
        if metric not in ("cosine", "euclidean"):
            raise ConfigError("evaluators.retrieval.metric", metric, ["cosine", "euclidean"])
        self.query_fraction, self.max_queries, self.max_gallery = query_fraction, max_queries, max_gallery
        self.metric, self.classes, self.seed = metric, classes, seed
        self.galleries: list[torch.Tensor] = []
        self.gallery_classes: list[list[int]] = []  # classes indexed in each gallery
        self.rows: dict[str, list[list[float]]] = {"rank1": [], "map": []}
        self.data: tuple[TensorData, TensorData] | None = None

    def _setup(self, stream) -> tuple[TensorData, TensorData]:
        if self.data is None:
            test = TensorData.concat([e.test for e in stream.learn_experiences])
            q, g = split_queries(test.y, self.query_fraction, self.max_queries, self.max_gallery, self.seed)
            self.data = (test.subset(q), test.subset(g))
        return self.data

    def after_event(self, strategy, stream, exp, device) -> dict[str, Any]:
        queries, gallery = self._setup(stream)
        q_feats = embed(strategy, queries.x, device)
        self.galleries.append(embed(strategy, gallery.x, device))
        seen = sorted({c for e in stream.experiences[: exp.id + 1] if e.kind == "learn" for c in e.classes})
        self.gallery_classes.append(seen if self.classes == "seen" else gallery.classes())
        row: dict[str, list[float]] = {"rank1": [], "map": []}
        for g_feats, cls in zip(self.galleries, self.gallery_classes, strict=True):
            qm, gm = torch.isin(queries.y, torch.tensor(cls)), torch.isin(gallery.y, torch.tensor(cls))
            sim = C.similarity(q_feats[qm], g_feats[gm], self.metric)
            row["rank1"].append(C.rank1(sim, queries.y[qm], gallery.y[gm]))
            row["map"].append(C.mean_average_precision(sim, queries.y[qm], gallery.y[gm]))
        for score in row:
            self.rows[score].append(row[score])
        return row

    def matrix(self, score: str = "rank1") -> np.ndarray:
        T = len(self.rows[score])
        M = np.full((T, T), np.nan)
        for i, row in enumerate(self.rows[score]):
            M[i, : len(row)] = row
        return M

    def finalize(self, run_dir: Path, result: dict[str, Any]) -> dict[str, float]:
        if not self.rows["rank1"]:
            return {}
        M, M_map = self.matrix("rank1"), self.matrix("map")
        plot_compatibility(M, Path(run_dir) / "plots" / "compatibility_matrix.png", title=result.get("strategy", ""))
        return {
            "retrieval/ac": C.average_compatibility(M),
            "retrieval/ac_ties": C.average_compatibility(M, strict=False),
            "retrieval/am": C.average_multimodel_accuracy(M),
            "retrieval/am_map": C.average_multimodel_accuracy(M_map),
            "retrieval/ac_map": C.average_compatibility(M_map),
            "retrieval/final_rank1": float(M[-1, -1]),
            "retrieval/final_map": float(M_map[-1, -1]),
        }

    def state(self) -> dict[str, Any]:
        return {"galleries": list(self.galleries), "gallery_classes": self.gallery_classes, "rows": self.rows}

    def load_state(self, state: dict[str, Any]) -> None:
        self.galleries = list(state.get("galleries", []))
        self.gallery_classes = list(state.get("gallery_classes", []))
        self.rows = state.get("rows", {"rank1": [], "map": []})


def plot_compatibility(M: np.ndarray, path: Path, title: str = "") -> Path:
    """Heat map of the compatibility matrix (%, lower triangle); cells failing the ECC are outlined."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    T = len(M)
    fig, ax = plt.subplots(figsize=(1.2 + 0.8 * T, 1.0 + 0.7 * T))
    im = ax.imshow(100 * M, vmin=0, vmax=100, cmap="viridis")
    ok = C.ecc_matrix(M)
    for (i, j), v in np.ndenumerate(M):
        if j <= i:
            ax.text(j, i, f"{100 * v:.1f}", ha="center", va="center", color="w" if v < 0.6 else "k", fontsize=8)
            if j < i and not ok[i, j]:
                ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, ec="red", lw=2))
    ax.set_xlabel("gallery embedded by model after event")
    ax.set_ylabel("queries embedded by model after event")
    ax.set_xticks(range(T)), ax.set_yticks(range(T))
    ax.set_title(
        f"rank-1 compatibility (%) {title}\nAC={C.average_compatibility(M):.2f}  "
        f"AM={100 * C.average_multimodel_accuracy(M):.1f}  (red: ECC fails)",
        fontsize=9,
    )
    fig.colorbar(im, ax=ax, fraction=0.046)
    return _save(fig, path)
