"""Every unlearning method vs the retrain oracle on every unlearning metric (reduced CPU protocol).

    python benchmarks/unlearning_table.py --dataset mnist      # also: cifar10, digits (seconds)

Stream: learn classes {0,1}, {2,3}, {4,5} (class-incremental, replay), then one forget request:
``class`` (forget class 1) or ``random10`` (10% of all data learned so far). The learning part is
run once per request exactly as ``clframe run`` runs it (same per-event seeds: ``clframe run`` with
the same overrides and ``unlearning=<method>`` gives the same numbers); each method then answers the
request on a copy and the ``unlearning`` evaluator measures it; all methods share one cached oracle.
Writes ``<out>/<dataset>.md`` (tables), ``<dataset>.json`` and bar / curve plots.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

METHODS = ("ga", "graddiff", "npo", "simnpo", "repnoise", "finetune_retain", "random_label")
REQUESTS = {
    "class": "[{after: 2, type: class, classes: [1]}]",
    "random10": "[{after: 2, type: fraction, fraction: 0.1}]",
}
BASE = [
    "scenario=unlearning_digits",
    "+scenario.base.classes=[0,1,2,3,4,5]",
    "scenario.base.n_experiences=3",
    "strategy=replay",
    "strategy.lr=0.05",
    "strategy.momentum=0.9",
    "strategy.batch_size=64",
    "unlearning.steps=100",
    "unlearning.lr=0.01",
    "unlearning.batch_size=64",
    "unlearning.eval_every=10",
]
PROTOCOLS = {
    "digits": ["backbone.hidden=[128,128]", "trainer.max_epochs=5", "strategy.buffer_size=200"],
    "mnist": [
        "scenario.base.dataset=mnist",
        "+scenario.base.train_per_class=2000",
        "+scenario.base.test_per_class=500",
        "backbone.hidden=[256,256]",
        "trainer.max_epochs=1",
        "strategy.buffer_size=600",
    ],
    "cifar10": [
        "scenario.base.dataset=cifar10",
        "+scenario.base.train_per_class=1000",
        "+scenario.base.test_per_class=500",
        "backbone=cnn",
        "backbone.channels=[32,64,128]",
        "trainer.max_epochs=3",
        "strategy.buffer_size=600",
    ],
}
EVALUATOR = {"cifar10": {"relearn_max_steps": 100, "max_eval": 500, "cka_samples": 300}}  # CNN: keep evaluation cheap
COLUMNS = [
    ("forget_acc", "forget acc"),
    ("retain_acc", "retain acc"),
    ("test_acc", "test acc"),
    ("forget_test_acc", "forget-class test acc"),
    ("avg_gap", "avg gap"),
    ("kl_oracle/forget", "KL forget"),
    ("js_oracle/forget", "JS forget"),
    ("js_oracle/test", "JS test"),
    ("mia_loss_auc", "MIA loss AUC"),
    ("mia_entropy_auc", "MIA entropy AUC"),
    ("relearn_steps", "relearn steps"),
    ("probe_acc", "probe acc"),
    ("knn_acc", "k-NN acc"),
    ("cka_original/features", "CKA orig"),
    ("cka_oracle/features", "CKA oracle"),
]


def forget_evaluation(result: dict) -> dict:
    return next(
        ev["unlearning"]
        for ev, r in zip(result["evaluations"], result["row_events"], strict=True)
        if r["kind"] == "forget"
    )


def row(e: dict, who: str) -> dict[str, float]:
    out = {}
    for key, _ in COLUMNS:
        for k in (f"{who}/{key}", f"unlearn/{key}" if who == "unlearn" else None):
            if k and k in e:
                out[key] = e[k]
                break
    return out


def fmt(key: str, v) -> str:
    if v is None:
        return "–"
    if key == "relearn_steps":
        return str(int(v))
    if key.startswith(("kl", "js", "cka", "mia", "avg")):
        return f"{v:.3f}"
    return f"{100 * v:.1f}"


def table(rows: dict[str, dict[str, float]]) -> str:
    keys = [k for k, _ in COLUMNS if any(k in r for r in rows.values())]
    lines = ["| method | " + " | ".join(dict(COLUMNS)[k] for k in keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for name, r in rows.items():
        lines.append(f"| {name} | " + " | ".join(fmt(k, r.get(k)) for k in keys) + " |")
    return "\n".join(lines)


def learn_once(cfg, eval_kwargs: dict, evaluator: str = "unlearning"):
    """Learn the experiences before the forget event once (exactly as ``clframe run`` does: same
    per-event seeds), with the unlearning evaluator watching; every method then starts from a copy."""
    from clframe.fit import Engine
    from clframe.registry import EVALUATORS
    from clframe.runner import build, eval_device, learn_experience, run_context, start_event

    stream, strategy = build(cfg)
    evaluator = EVALUATORS.build({"name": evaluator, **eval_kwargs})
    evaluator.setup(run_context(cfg, stream, cfg.run_dir))
    pos = next(e.id for e in stream.experiences if e.kind == "forget")
    for exp in stream.experiences[:pos]:
        start_event(strategy, int(cfg.seed), exp)
        learn_experience(Engine.from_config(cfg), strategy, exp)
        evaluator.after_event(strategy, stream, exp, eval_device(cfg))
    return stream, strategy.cpu(), evaluator, stream.experiences[pos]


def unlearn_copy(cfg, stream, learned, evaluator, exp) -> dict:
    """One method answers the forget request on a copy of the learned model; all metrics after it."""
    import copy

    from clframe.runner import build_strategy, eval_device, start_event
    from clframe.stores import answer_forget_request

    model = build_strategy(cfg, stream)  # carries cfg.unlearning
    model.restore_checkpoint_state(learned.checkpoint_state())
    model.load_state_dict(learned.state_dict())
    start_event(model, int(cfg.seed), exp)
    answer_forget_request(model, exp, stream.forgotten_until(exp.id))
    return copy.copy(evaluator).after_event(model, stream, exp, eval_device(cfg))


def cached_unlearn_copy(done: Path, cfg, stream, learned, evaluator, exp) -> dict:
    """:func:`unlearn_copy`, its result kept in ``done`` (JSON): a rerun of a benchmark skips finished methods."""
    from clframe.io import atomic_write_text

    if done.is_file():
        return json.loads(done.read_text())
    e = unlearn_copy(cfg, stream, learned, evaluator, exp)
    atomic_write_text(done, json.dumps(e))
    return e


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="digits", choices=sorted(PROTOCOLS))
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--requests", nargs="+", default=list(REQUESTS), choices=list(REQUESTS))
    parser.add_argument("--out", default="benchmarks/results/unlearning")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is fastest on a shared machine)")
    parser.add_argument(
        "--merge",
        action="store_true",
        help="keep the rows of methods not in --methods from the existing <out>/<dataset>.json (same protocol "
        "and seed); the recomputed 'original' / 'oracle' rows must equal the stored ones",
    )
    args = parser.parse_args(argv)
    import torch

    from clframe.io import atomic_write_text

    torch.set_num_threads(args.threads)
    from clframe.config import compose
    from clframe.unlearning.plots import plot_curves, plot_oracle_bars

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report, dump = [f"## {args.dataset}: every method vs the retrain oracle (seed {args.seed})\n"], {}
    name = args.dataset if set(args.requests) == set(REQUESTS) else f"{args.dataset}_{'_'.join(args.requests)}"
    stored = json.loads((out / f"{name}.json").read_text()) if args.merge else {}
    eval_kwargs = {
        "oracle_cache": str(out / ".oracle_cache"),
        "relearn_max_steps": 200,
        **EVALUATOR.get(args.dataset, {}),
    }
    for req in args.requests:
        overrides = [
            *BASE,
            *PROTOCOLS[args.dataset],
            f"scenario.requests={REQUESTS[req]}",
            f"seed={args.seed}",
            f"run_dir={out / 'runs' / f'{args.dataset}_{req}'}",
            "overwrite=true",
            "logger=none",
            "progress_bar=none",
            "plots=false",
        ]
        t0 = time.perf_counter()
        stream, learned, evaluator, exp = learn_once(compose([*overrides, "unlearning=ga"]), eval_kwargs)
        print(f"{args.dataset} {req}: learned in {time.perf_counter() - t0:.0f}s", flush=True)
        rows, curves, oracle, original = {}, {}, None, None
        for method in args.methods:
            done = out / "runs" / f"{args.dataset}_{req}_{method}.json"
            t0 = time.perf_counter()
            cfg = compose([*overrides, f"unlearning={method}"])
            e = cached_unlearn_copy(done, cfg, stream, learned, evaluator, exp)
            rows[method], curves[method] = row(e, "unlearn"), e.get("unlearn/curve", [])
            oracle, original = row(e, "oracle"), row(e, "original")
            print(f"{args.dataset} {req} {method}: {time.perf_counter() - t0:.0f}s", rows[method], flush=True)
        if args.merge:  # same learning, same oracle: the stored rows of the other methods still hold
            old = stored[req]
            for key, new in (("original (before)", original), ("oracle", oracle)):
                if old["rows"][key] != new:
                    raise SystemExit(f"--merge: the {key} row differs from {name}.json: {old['rows'][key]} vs {new}")
            keep = [m for m in old["curves"] if m not in rows]
            rows = {m: rows.get(m, old["rows"].get(m)) for m in [*METHODS, *keep] if m in rows or m in keep}
            curves = {m: curves.get(m, old["curves"].get(m)) for m in rows}
        rows = {"original (before)": original, **rows, "oracle": oracle}
        dump[req] = {"rows": rows, "curves": curves}
        report.append(f"### request: {req}\n\n{table(rows)}\n")
        plot_oracle_bars(dict(rows), out / f"{args.dataset}_{req}_bars.png")
        plot_curves(curves, out / f"{args.dataset}_{req}_curves.png", oracle, f"{args.dataset}: {req}")
        atomic_write_text(out / f"{name}.md", "\n".join(report))  # after every request: nothing is lost
        atomic_write_text(out / f"{name}.json", json.dumps(dump, indent=1))
    print("\n".join(report))


if __name__ == "__main__":
    main()
