"""Plots from ``metrics.json``: accuracy-matrix heat map, stability curves, avg accuracy and
forgetting vs experience, and overlays of several runs. matplotlib is imported lazily."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from clframe.io import _atomic
from clframe.report import group_runs, load_metrics


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _integer_ticks():
    from matplotlib.ticker import MaxNLocator

    return MaxNLocator(integer=True)


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fmt = path.suffix.lstrip(".") or "png"  # png, or vector output: pdf / svg
    _atomic(path, lambda fh: fig.savefig(fh, format=fmt, dpi=120))
    _pyplot().close(fig)
    return path


def _label(m: dict) -> str:
    return f"{m['strategy']} (seed {m['seed']})"


def plot_accuracy_matrix(m: dict, path: Path) -> Path:
    plt = _pyplot()
    R = 100 * np.asarray(m["accuracy_matrix"], dtype=float)  # null (a column no longer asked) -> NaN
    future = np.triu(np.ones_like(R, dtype=bool), k=1)  # not learned yet: greyed (class-/task-IL: 0 by masking)
    show_future = m.get("setting") == "domain"  # domain-IL: the value means something (forward transfer)
    fig, ax = plt.subplots(figsize=(1.0 + 0.8 * R.shape[1], 1.0 + 0.7 * R.shape[0]))
    cmap = plt.get_cmap("viridis").with_extremes(bad="#e6e6e6")
    im = ax.imshow(np.ma.masked_array(R, mask=future | np.isnan(R)), vmin=0, vmax=100, cmap=cmap)
    for (i, j), v in np.ndenumerate(R):
        if future[i, j]:
            label, color = (f"{v:.1f}" if show_future else "·"), "#888888"
        else:
            label, color = ("forgotten", "k") if np.isnan(v) else (f"{v:.1f}", "k" if v >= 60 else "w")
        ax.text(j, i, label, ha="center", va="center", color=color, fontsize=8)
    ax.set_xlabel("evaluated on experience")
    ax.set_ylabel("after training on experience")
    ax.set_xticks(range(R.shape[1]))
    ax.set_yticks(range(R.shape[0]))
    ax.set_title(f"accuracy matrix (%) — {m['scenario']} / {m['strategy']}")
    fig.colorbar(im, ax=ax, fraction=0.046)
    return _save(fig, path)


def plot_stability(m: dict, path: Path) -> Path:
    """Accuracy of each experience's test split over the stream, from when it was learned."""
    plt = _pyplot()
    R = 100 * np.asarray(m["accuracy_matrix"], dtype=float)  # null (a column no longer asked) -> NaN
    fig, ax = plt.subplots(figsize=(6, 4))
    for j in range(R.shape[1]):
        steps = np.arange(j, R.shape[0])
        if len(steps):
            ax.plot(steps, R[j:, j], marker="o", label=f"exp {j}")
    ax.set_xlabel("after training on experience")
    ax.xaxis.set_major_locator(_integer_ticks())
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(0, 102)
    ax.set_title(f"stability curves — {m['strategy']}")
    ax.legend(fontsize=8, ncol=2)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_curves(groups: list[list[dict]], path: Path) -> Path:
    """Average accuracy and forgetting vs experience: one line per group of runs (the seeds of one config),
    its mean with a ±1 std band over seeds when it has several; colour: the method."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    methods = list(dict.fromkeys(g[0]["strategy"] for g in groups))
    colours = plt.get_cmap("tab10")
    styles = {}
    for group in groups:
        name = group[0]["strategy"]
        k = styles.get(name, 0)  # several configs of one method: same colour, another line style
        styles[name] = k + 1
        style = ["-", "--", ":", "-."][k % 4]
        colour = colours(methods.index(name) % 10)
        label = _label(group[0]) if len(group) == 1 else f"{name} (mean ± std, {len(group)} seeds)"
        for ax, key in zip(axes, ("cl/avg_acc", "cl/forgetting")):
            curves = [100 * np.asarray(m["curves"].get(key, []), dtype=float) for m in group]
            n = min(len(c) for c in curves)
            ys = np.stack([c[:n] for c in curves])
            mean = ys.mean(0)
            ax.plot(np.arange(n), mean, marker="o", ls=style, color=colour, label=label)
            if len(group) > 1:
                std = ys.std(0, ddof=1)
                ax.fill_between(np.arange(n), mean - std, mean + std, color=colour, alpha=0.2, lw=0)
    for ax, title in zip(axes, ("average accuracy (%)", "forgetting (%, lower is better)")):
        ax.set_xlabel("after training on experience")
        ax.xaxis.set_major_locator(_integer_ticks())
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].set_ylim(0, 100)
    axes[0].legend(fontsize=8)
    return _save(fig, path)


FORMATS = ("png", "pdf", "svg")


def _check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise ValueError(f"format {fmt!r} is invalid; valid choices: {', '.join(FORMATS)}")


def plot_run(run_dir: str | Path, out: str | Path | None = None, fmt: str = "png") -> list[Path]:
    """Write ``accuracy_matrix``, ``stability``, ``curves`` (``.png``, or vector ``.pdf`` / ``.svg``) into ``out``
    (default: ``run_dir/plots``)."""
    _check_format(fmt)
    run_dir = Path(run_dir)
    m = load_metrics(run_dir)
    if not m["accuracy_matrix"]:
        return []
    out = Path(out) if out is not None else run_dir / "plots"
    return [
        plot_accuracy_matrix(m, out / f"accuracy_matrix.{fmt}"),
        plot_stability(m, out / f"stability.{fmt}"),
        plot_curves([[m]], out / f"curves.{fmt}"),
    ]


def plot_comparison(run_dirs: list[str | Path], out: str | Path | None = None, fmt: str = "png") -> list[Path]:
    """Overlay the average-accuracy and forgetting curves of several runs in one figure (colour: method); the
    seeds of one config (:func:`clframe.report.group_runs`) are one line with a band over them."""
    _check_format(fmt)
    groups = [[load_metrics(d) for d in group] for group in group_runs([Path(d) for d in run_dirs])]
    out = Path(out) if out else Path(run_dirs[0]) / "plots"
    return [plot_curves(groups, out / f"comparison_curves.{fmt}")]
