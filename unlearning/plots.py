"""Unlearning plots: forget vs retain accuracy over unlearning steps, metrics vs the oracle as bars,
per-path curves (path dependence), and the accuracy matrix of the whole stream including forget events."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from clframe.plots import _pyplot, _save
from clframe.unlearning.metrics import OracleUnavailableError


def plot_curves(
    curves: dict[str, list[dict]], path: Path, oracle: dict[str, float] | None = None, title: str = "unlearning"
) -> Path:
    """One line per method / path: forget, retain and test accuracy (%) vs unlearning step;
    dashed horizontal lines: the oracle's accuracies (when given)."""
    plt = _pyplot()
    keys = ("forget_acc", "retain_acc", "test_acc")
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for label, hist in curves.items():
        steps = [h["step"] for h in hist]
        for ax, k in zip(axes, keys, strict=True):
            ys = [100 * h[k] if h.get(k) is not None else np.nan for h in hist]
            ax.plot(steps, ys, marker=".", label=label)
    for ax, k in zip(axes, keys, strict=True):
        if oracle and oracle.get(k) is not None:
            ax.axhline(100 * oracle[k], ls="--", c="k", lw=1, label="oracle")
        ax.set_title(k.replace("_", " ") + " (%)")
        ax.set_xlabel("unlearning step")
        ax.set_ylim(-2, 102)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(title)
    return _save(fig, path)


def plot_oracle_bars(
    table: dict[str, dict[str, float]],
    path: Path,
    metrics: tuple[str, ...] = ("forget_acc", "retain_acc", "test_acc", "mia_loss_auc", "probe_acc"),
) -> Path:
    """Grouped bars: each metric for each method and the oracle (``table[method][metric]``; the
    oracle's row must be named ``oracle``)."""
    if "oracle" not in table:
        raise OracleUnavailableError("plot_oracle_bars", "no 'oracle' row in the table")
    plt = _pyplot()
    names = list(table)
    fig, ax = plt.subplots(figsize=(3.0 + 1.4 * len(metrics), 4))
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        vals = [100 * table[name].get(m, np.nan) for m in metrics]
        ax.bar(
            np.arange(len(metrics)) + i * width,
            vals,
            width,
            label=name,
            color="k" if name == "oracle" else None,
            alpha=0.85,
        )
    ax.set_xticks(np.arange(len(metrics)) + 0.4 - width / 2)
    ax.set_xticklabels(metrics, fontsize=8)
    ax.set_ylabel("%")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.grid(alpha=0.3, axis="y")
    return _save(fig, path)


def plot_stream_matrix(m: dict[str, Any], path: Path) -> Path:
    """Accuracy on every learn experience's test split after every event, forget events included."""
    plt = _pyplot()
    R = 100 * np.asarray(m["rows"], dtype=float)
    labels = [ev["name"] for ev in m["row_events"]]
    fig, ax = plt.subplots(figsize=(1.5 + 0.8 * R.shape[1], 1.0 + 0.45 * R.shape[0]))
    ax.imshow(R, vmin=0, vmax=100, cmap="viridis")
    for (i, j), v in np.ndenumerate(R):
        ax.text(j, i, f"{v:.0f}", ha="center", va="center", color="w" if v < 60 else "k", fontsize=7)
    ax.set_yticks(range(len(labels)))
    ax.set_yticklabels(labels, fontsize=7)
    ax.set_xticks(range(R.shape[1]))
    ax.set_xlabel("test split of learn experience")
    ax.set_title("accuracy (%) after each event")
    return _save(fig, path)


def plot_quality_utility(points: dict[str, tuple[float, float]], path: Path, title: str = "") -> Path:
    """TOFU's trade-off: one point per method (``{label: (model utility, log10 forget quality)}``); up and
    right is better, the oracle sits at log10 p = 0."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 4))
    for label, (utility, quality) in points.items():
        ax.scatter([utility], [quality], s=40, label=label, color="k" if label == "oracle" else None)
        ax.annotate(label, (utility, quality), fontsize=7, xytext=(4, 3), textcoords="offset points")
    ax.set_xlabel("model utility (harmonic mean, 0–1)")
    ax.set_ylabel("forget quality (log10 KS p-value)")
    ax.grid(alpha=0.3)
    ax.set_title(title or "forget quality vs model utility")
    return _save(fig, path)


def plot_tofu_run(run_dir: str | Path, m: dict[str, Any], method: str = "unlearned") -> list[Path]:
    """The ``tofu`` evaluator's per-run plots: the stream matrix, the curve over unlearning steps and, per
    forget event, forget quality vs model utility for the unlearned model, the original and the oracle."""
    paths = plot_unlearning_run(run_dir, m, method, evaluator="tofu")
    for ev, row in zip(m["evaluations"], m["row_events"], strict=True):
        e = ev.get("tofu") or {}
        if row["kind"] != "forget":
            continue
        points = {
            (method if who == "unlearn" else who): (e[f"{who}/model_utility"], e[f"{who}/forget_quality_log10"])
            for who in ("unlearn", "original", "oracle")
            if f"{who}/model_utility" in e and f"{who}/forget_quality_log10" in e
        }
        if points:
            paths.append(plot_quality_utility(points, Path(run_dir) / "plots" / f"tofu_{row['name']}.png", row["name"]))
    return paths


def plot_unlearning_run(
    run_dir: str | Path, m: dict[str, Any], method: str = "unlearned", evaluator: str = "unlearning"
) -> list[Path]:
    """The per-run unlearning plots (called by the evaluator's ``finalize``)."""
    out = Path(run_dir) / "plots"
    paths = [plot_stream_matrix(m, out / "stream_matrix.png")]
    for ev, row in zip(m["evaluations"], m["row_events"], strict=True):
        e = ev.get(evaluator) or {}
        if row["kind"] == "forget" and e.get("unlearn/curve"):
            oracle = (
                {k: e.get(f"oracle/{k}") for k in ("forget_acc", "retain_acc", "test_acc")}
                if "oracle/forget_acc" in e
                else None
            )
            paths.append(
                plot_curves({method: e["unlearn/curve"]}, out / f"unlearning_{row['name']}.png", oracle, row["name"])
            )
    return paths
