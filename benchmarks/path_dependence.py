"""Path dependence of local unlearning (On the Impossibility of Retrain Equivalence in Machine Unlearning), one
driver for image classifiers and causal language models.

    python benchmarks/path_dependence.py --modality lm                      # experiment=tofu_paths: GA, NPO, SimNPO
    python benchmarks/path_dependence.py --modality vision --methods npo    # experiment=path_dependence_digits
    python benchmarks/path_dependence.py --modality vision --methods ga --tag _gentle \\
        unlearning.steps=20 unlearning.lr=0.003 unlearning.eval_every=2   # extra Hydra overrides go last

The same K = 3 stages in every order (``scenario.order``, all 3! = 6 by default), then one forget request answered
by *local* unlearning (forget-set gradients only: ``unlearning.retain_weight=0``) with the same hyperparameters on
every path. ``vision``: class stages {0,1}, {2,3}, {4,5} of digits (or MNIST) learned with replay, forget class 1.
``lm``: world facts as records, authors 0-7 as short answers, authors 8-15 as sentences, forget authors 13-15.

Per order the learning runs once, exactly as ``clframe run experiment=<preset> scenario.order=[...]
unlearning=<method> unlearning.retain_weight=0`` runs it (same per-event seeds, so the same numbers), with the
preset's evaluator (``unlearning`` / ``tofu``) watching; each method answers the request on a copy and is measured
against that order's own retrain oracle (same order, forget set removed), whose forget-set trajectory value is
probed with the same functions as the unlearning curve.

Writes into ``--out`` (default ``benchmarks/results/path_dependence`` or ``benchmarks/results/lm_paths``), with
``<stem>`` = ``<dataset>_<methods><tag>`` (``_seed<k>`` appended for seed k > 0):

* ``<stem>.md`` — per method a row per order (before / after / oracle, distance to the oracle, steps until the
  forget-set trajectory reaches the oracle's level), the spread across orders (min / max / max - min / std) and
  the trajectory per order;
* ``<stem>.json`` — every evaluation, by method and order;
* ``<stem>_paths.png`` — one panel per method and trajectory, one curve per ordering, its oracle dashed.

A rerun reuses the finished (order, method) results of the same composed config from ``<out>/runs/`` (``--fresh``
recomputes them).
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import itertools
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from unlearning_table import PROTOCOLS, learn_once, unlearn_copy  # benchmarks/ is on sys.path when run as a script


@dataclass(frozen=True)
class Modality:
    """What differs between the vision and the language-model study; everything else is shared."""

    preset: str  # experiments/experiment/<preset>.yaml
    evaluator: str  # the preset's evaluator measuring every method against the oracle
    out: str  # default output folder
    datasets: dict[str, list[str]]  # --dataset -> extra overrides
    stages: str  # the stages, for the headings
    final: tuple[tuple[str, str], ...]  # (key, label): measured before / after unlearning and for the oracle
    gap: tuple[str, ...]  # final keys whose |unlearned - oracle| is the distance to the oracle
    extra: tuple[tuple[str, str], ...]  # (key, label) of the unlearned model, as they are ("*": last match)
    curves: tuple[str, ...]  # trajectory keys over unlearning steps; the first is the forget-set trajectory
    default_methods: tuple[str, ...]


MODALITIES = {
    "vision": Modality(
        preset="path_dependence_digits",
        evaluator="unlearning",
        out="benchmarks/results/path_dependence",
        datasets={"digits": [], "mnist": PROTOCOLS["mnist"]},  # mnist: the unlearning table's reduced protocol
        stages="{0,1} {2,3} {4,5}, forget class 1",
        final=(("forget_acc", "forget"), ("retain_acc", "retain"), ("test_acc", "test")),
        gap=("forget_acc", "retain_acc", "test_acc"),
        extra=(("cka_oracle/features", "CKA to oracle"),),
        curves=("forget_acc", "retain_acc", "test_acc"),
        default_methods=("ga",),
    ),
    "lm": Modality(
        preset="tofu_paths",
        evaluator="tofu",
        out="benchmarks/results/lm_paths",
        datasets={"authors": []},
        stages="0 world facts (records), 1 authors 0-7 (short answers), 2 authors 8-15 (sentences), "
        "forget authors 13-15",
        final=(
            ("forget_prob", "forget prob"),
            ("retain_prob", "retain prob"),
            ("world_facts_prob", "world-facts prob"),
            ("model_utility", "model utility"),
        ),
        gap=("forget_prob", "retain_prob", "world_facts_prob"),
        extra=(
            ("forget_quality_log10", "forget quality (log10 p)"),
            ("forget_truth_ratio", "forget truth ratio"),
            ("cka_oracle/layer_*", "CKA to oracle"),
        ),
        curves=("forget_ll", "retain_acc"),
        default_methods=("ga", "npo", "simnpo"),
    ),
}
CURVE_LABELS = {
    "forget_acc": "forget accuracy (%)",
    "retain_acc": "retain accuracy (%)",
    "test_acc": "test accuracy (%)",
    "forget_ll": "forget-set log-likelihood per token",
}
ORDERS = ["".join(map(str, p)) for p in itertools.permutations(range(3))]


# ------------------------------------------------------------------------------------------------ numbers


def percent(key: str) -> bool:
    """Accuracies are reported in %, likelihoods and probabilities as they are."""
    return key.endswith("_acc")


def lookup(e: dict, key: str):
    """``e[key]``; a key with ``*`` takes the last match in natural order (the last layer); ``None`` if absent."""
    if "*" not in key:
        return e.get(key)
    natural = lambda k: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", k)]  # noqa: E731
    matches = sorted((k for k in e if fnmatch.fnmatchcase(k, key)), key=natural)
    return e[matches[-1]] if matches else None


def gaps(e: dict, keys: tuple[str, ...]) -> dict[str, float]:
    """Distance to the oracle: ``|unlearned - oracle|`` per key (the unlearning metrics' ``gap``) and their mean."""
    from clframe.unlearning.metrics import gap

    out = {k: gap(e[f"unlearn/{k}"], e.get(f"oracle/{k}"), f"gap/{k}") for k in keys}
    out["average"] = float(np.mean(list(out.values())))
    return out


def steps_to_reach(curve: list[dict], key: str, target: float | None) -> int | None:
    """The first probed unlearning step at which ``curve[key]`` is at or below ``target`` (the oracle's value of
    the forget-set trajectory); ``None`` if it never gets there (or there is no target)."""
    if target is None:
        return None
    return next((h["step"] for h in curve if h.get(key) is not None and h[key] <= target), None)


def spread(values: list[float], scale: float = 1.0) -> dict[str, float]:
    """min, max, max - min and the population std across orders (of ``scale * value``)."""
    v = scale * np.asarray(values, dtype=float)
    return {"min": float(v.min()), "max": float(v.max()), "range": float(v.max() - v.min()), "std": float(v.std())}


def oracle_probe(evaluator, stream, exp, device, curves: tuple[str, ...]) -> dict[str, float | None]:
    """The order's retrain oracle (trained, or loaded from the evaluator's cache) probed as the unlearning curve
    probes the model: the level the forget-set trajectory would have to reach for retrain equivalence."""
    from clframe.stream import split_test
    from clframe.unlearning.oracle import train_oracle
    from clframe.unlearning.pieces import accuracy_on, mean_log_likelihood_on

    oracle, _ = train_oracle(evaluator.context, stream, exp.id, cache_dir=evaluator.cache_dir)
    oracle.to(device)
    data = {"forget": exp.forget, "retain": exp.retain, "test": split_test(exp)[0] if exp.test is not None else None}
    out = {}
    for key in curves:
        split, kind = key.rsplit("_", 1)
        if split in data and data[split] is not None:
            out[key] = (accuracy_on if kind == "acc" else mean_log_likelihood_on)(oracle, data[split])
    return out


# ------------------------------------------------------------------------------------------------ running


def config_digest(cfg) -> str:
    """A hash of the composed config (its output folder aside): a finished (order, method) is reused only for
    the very same config."""
    from omegaconf import OmegaConf

    node = OmegaConf.to_container(cfg, resolve=True)
    node.pop("run_dir", None)
    return hashlib.sha1(json.dumps(node, sort_keys=True, default=str).encode()).hexdigest()[:12]


def run_orders(
    modality: Modality,
    methods: list[str],
    orders: list[str],
    *,
    dataset: str,
    seed: int,
    out: Path,
    overrides: list[str],
    fresh: bool = False,
) -> dict[str, dict[str, dict]]:
    """``{method: {order: evaluation}}``; every evaluation also holds ``oracle/probe`` (:func:`oracle_probe`)."""
    from clframe.config import compose
    from clframe.io import atomic_write_text
    from clframe.runner import eval_device

    results: dict[str, dict[str, dict]] = {m: {} for m in methods}
    for order in orders:
        base = [
            f"experiment={modality.preset}",
            *modality.datasets[dataset],
            "unlearning.retain_weight=0.0",  # local unlearning: forget-set gradients only
            f"scenario.order=[{','.join(order)}]",
            f"seed={seed}",
            f"run_dir={out / 'runs' / f'{dataset}_s{seed}_{order}'}",  # nothing is written there
            "overwrite=true",
            "logger=none",
            "progress_bar=none",
            "plots=false",
            *overrides,
        ]
        cfgs = {m: compose([*base, f"unlearning={m}"]) for m in methods}
        done = {m: out / "runs" / f"{dataset}_s{seed}_{order}_{m}_{config_digest(c)}.json" for m, c in cfgs.items()}
        todo = [m for m in methods if fresh or not done[m].is_file()]
        for m in methods:
            if m not in todo:
                results[m][order] = json.loads(done[m].read_text())
        if not todo:
            print(f"order {order}: every method cached in {out / 'runs'}", flush=True)
            continue
        cfg = cfgs[todo[0]]
        node = next((n for n in cfg.get("evaluators") or [] if n["name"] == modality.evaluator), {})
        kwargs = {**{k: v for k, v in node.items() if k != "name"}, "oracle_cache": str(out / ".oracle_cache")}
        t0 = time.perf_counter()
        stream, learned, evaluator, exp = learn_once(cfg, kwargs, modality.evaluator)
        print(f"order {order}: learned in {time.perf_counter() - t0:.0f}s", flush=True)
        # the order's oracle, trained (or loaded) once here; every method's evaluator then loads it from the cache
        probe = oracle_probe(evaluator, stream, exp, eval_device(cfg), modality.curves)
        for m in todo:
            t0 = time.perf_counter()
            e = unlearn_copy(cfgs[m], stream, learned, evaluator, exp)
            if not e.get("oracle/cached", True):
                print(f"  warning: {m}'s oracle was retrained (clframe's source changed during the run?)", flush=True)
            e["oracle/probe"] = probe
            atomic_write_text(done[m], json.dumps(e))
            results[m][order] = e
            first = modality.final[0][0]
            print(f"  {m}: {first} {e[f'unlearn/{first}']:.3f} ({time.perf_counter() - t0:.0f}s)", flush=True)
    return results


# ------------------------------------------------------------------------------------------------ report


def _fmt(key: str, v) -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "–"
    return f"{100 * v:.1f}" if percent(key) else f"{v:.3f}"


def method_report(modality: Modality, method: str, by_order: dict[str, dict]) -> str:
    """Per order: before / after / oracle, distance to the oracle, the speed of unlearning; the spread across
    orders; the forget-set trajectory per order."""
    keys = [k for k, _ in modality.final]
    first = modality.curves[0]
    trip = lambda e, who: " / ".join(_fmt(k, e.get(f"{who}/{k}")) for k in keys)  # noqa: E731
    names = " / ".join(label for _, label in modality.final)
    head = [f"before: {names}", f"after: {names}", f"oracle: {names}", "avg gap to oracle"]
    head += [label for _, label in modality.extra]
    head += [f"{first} at the end / oracle", f"steps to the oracle's {first}"]
    lines = [f"### {method}\n", "| order | " + " | ".join(head) + " |", "|---" * (len(head) + 1) + "|"]
    rows = {}
    for order, e in by_order.items():
        curve, target = e.get("unlearn/curve") or [], e["oracle/probe"].get(first)
        g = gaps(e, modality.gap)
        reach = steps_to_reach(curve, first, target)
        last = curve[-1]["step"] if curve else 0
        rows[order] = {"gaps": g, "reach": last + 1 if reach is None else reach}
        cells = [trip(e, "original"), trip(e, "unlearn"), trip(e, "oracle"), f"{g['average']:.3f}"]
        cells += [_fmt(k, lookup(e, f"unlearn/{k}")) for k, _ in modality.extra]
        end = curve[-1].get(first) if curve else None
        cells += [f"{_fmt(first, end)} / {_fmt(first, target)}", str(reach) if reach is not None else f"> {last}"]
        lines.append(f"| {order} | " + " | ".join(cells) + " |")
    unit = " (%)" if all(percent(k) for k in keys) else ""
    lines += ["", f"| quantity{unit} across the {len(by_order)} orders | min | max | max − min | std |"]
    lines.append("|---|---|---|---|---|")

    def add(label: str, values: list, key: str) -> None:
        values = [v for v in values if v is not None]
        if values:
            s = spread(values, 100.0 if percent(key) else 1.0)
            digits = (1, 2) if percent(key) else (0, 1) if key == "steps" else (3, 3)
            cells = [f"{s[k]:.{digits[0]}f}" for k in ("min", "max", "range")] + [f"{s['std']:.{digits[1]}f}"]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")

    for who, label in (("original", "before unlearning"), ("unlearn", "after unlearning"), ("oracle", "oracle")):
        for k, name in modality.final:
            add(f"{label}: {name}", [e.get(f"{who}/{k}") for e in by_order.values()], k)
    for k in modality.gap:
        add(f"gap to oracle: {dict(modality.final)[k]}", [r["gaps"][k] for r in rows.values()], k)
    add("average gap", [r["gaps"]["average"] for r in rows.values()], modality.gap[0])
    for k, name in modality.extra:
        add(name, [lookup(e, f"unlearn/{k}") for e in by_order.values()], k)
    add(f"steps to the oracle's {first} (not reached: last + 1)", [r["reach"] for r in rows.values()], "steps")
    curves = {order: e.get("unlearn/curve") or [] for order, e in by_order.items()}
    steps = [h["step"] for h in next(iter(curves.values()), [])]
    if steps:
        lines += ["", f"{CURVE_LABELS.get(first, first)} over unlearning steps, per order:", ""]
        lines += [
            "| order | " + " | ".join(f"step {s}" for s in steps) + " | oracle |",
            "|---" * (len(steps) + 2) + "|",
        ]
        cell = (lambda v: f"{100 * v:.0f}") if percent(first) else (lambda v: f"{v:.2f}")  # noqa: E731
        for order, c in curves.items():
            target = by_order[order]["oracle/probe"].get(first)
            vals = [cell(h[first]) if h.get(first) is not None else "–" for h in c]
            lines.append(f"| {order} | " + " | ".join(vals) + f" | {cell(target) if target is not None else '–'} |")
    return "\n".join(lines) + "\n"


def plot_paths(modality: Modality, results: dict[str, dict[str, dict]], path: Path, title: str) -> Path:
    """One panel per method (columns) and trajectory (rows), one curve per ordering; dashed: that order's oracle."""
    from clframe.plots import _pyplot, _save

    plt = _pyplot()
    rows, cols = len(modality.curves), len(results)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.4 * rows), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for j, (method, by_order) in enumerate(results.items()):
        for i, key in enumerate(modality.curves):
            ax, scale = axes[i][j], (100.0 if percent(key) else 1.0)
            for n, (order, e) in enumerate(by_order.items()):
                c = colours[n % len(colours)]
                curve = [h for h in e.get("unlearn/curve") or [] if h.get(key) is not None]
                ax.plot([h["step"] for h in curve], [scale * h[key] for h in curve], marker=".", c=c, label=order)
                target = e["oracle/probe"].get(key)
                if target is not None:
                    ax.axhline(scale * target, ls="--", lw=0.8, c=c)
            ax.set_title(f"{method}: {CURVE_LABELS.get(key, key)}", fontsize=9)
            ax.set_xlabel("unlearning step")
            ax.grid(alpha=0.3)
    axes[0][0].legend(title="order (dashed: its oracle)", fontsize=7, title_fontsize=7)
    fig.suptitle(title)
    return _save(fig, path)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modality", default="vision", choices=sorted(MODALITIES))
    parser.add_argument("--dataset", default=None, help="vision: digits (default) | mnist")
    parser.add_argument("--methods", nargs="+", default=None, help="default: vision ga; lm ga npo simnpo")
    parser.add_argument("--method", dest="methods", action="append", help=argparse.SUPPRESS)  # the old flag
    parser.add_argument("--orders", nargs="+", default=ORDERS, choices=ORDERS)
    parser.add_argument("--out", default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is fastest on a shared machine)")
    parser.add_argument("--tag", default="", help="suffix of the output files (e.g. for other hyperparameters)")
    parser.add_argument("--fresh", action="store_true", help="recompute every (order, method), even if cached")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides, e.g. unlearning.steps=30")
    args = parser.parse_args(argv)
    modality = MODALITIES[args.modality]
    dataset = args.dataset or next(iter(modality.datasets))
    if dataset not in modality.datasets:
        parser.error(f"--dataset={dataset} is invalid for --modality {args.modality}; valid: {list(modality.datasets)}")
    methods = list(dict.fromkeys(args.methods or modality.default_methods))
    tag = args.tag + (f"_seed{args.seed}" if args.seed else "")
    stem = f"{dataset}_{'_'.join(methods)}{tag}"
    out = Path(args.out or modality.out)
    import torch

    torch.set_num_threads(args.threads)
    from clframe.io import atomic_write_text

    results = run_orders(
        modality,
        methods,
        list(args.orders),
        dataset=dataset,
        seed=args.seed,
        out=out,
        overrides=list(args.overrides),
        fresh=args.fresh,
    )
    heading = f"## path dependence ({args.modality}, {dataset}): stages {modality.stages}; local unlearning"
    heading += f", seed {args.seed}, orders {' '.join(args.orders)} {' '.join(args.overrides)}".rstrip()
    text = "\n".join([heading + "\n", *(method_report(modality, m, r) for m, r in results.items())])
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / f"{stem}.md", text)
    atomic_write_text(out / f"{stem}.json", json.dumps(results, indent=1))
    plot_paths(modality, results, out / f"{stem}_paths.png", f"{args.modality} ({dataset}): one curve per stage order")
    print(text)


if __name__ == "__main__":
    main()
