"""TOFU's protocol on the CPU: every unlearning method vs the retain-only oracle on a causal LM.

    python benchmarks/tofu_table.py                       # forget 1 / 5 / 10 %, seed 0, + seeds 1, 2 at 5 %
    python benchmarks/tofu_table.py --splits 0.05 --seeds 0 --methods npo simnpo

Stream: ``experiment=tofu_tiny`` with ``scenario.n_authors=100`` (so that 1 % is one author): a
~200k-parameter Llama-style model memorises 100 fictitious authors x 10 question-answer pairs and 40 world
facts, then a request forgets the last 1 / 5 / 10 % of the authors. Per (split, seed) the learning is run
once exactly as ``clframe run experiment=tofu_tiny scenario.n_authors=100 scenario.forget=<split>
unlearning=<method> seed=<seed>`` runs it (same per-event seeds: that command gives the same numbers); each
method answers the request on a copy and the ``tofu`` evaluator measures it against the original and the
retrain oracle (one oracle per split and seed, cached). Writes ``<out>/tofu.md`` (tables), ``tofu.json``
and a forget quality vs model utility scatter per split.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

from unlearning_table import cached_unlearn_copy, learn_once  # benchmarks/ is on sys.path when run as a script

#: row name -> unlearning overrides (NPO+RT is NPO with the retain term, plain NPO without)
METHODS = {
    "ga": ["unlearning=ga"],
    "graddiff": ["unlearning=graddiff"],
    "npo": ["unlearning=npo", "unlearning.retain_weight=0.0"],
    "npo_rt": ["unlearning=npo"],
    "simnpo": ["unlearning=simnpo"],
    "repnoise": ["unlearning=repnoise"],
}
BASE = ["experiment=tofu_tiny", "scenario.n_authors=100"]
COLUMNS = [
    ("forget_quality_log10", "forget quality (log10 p)"),
    ("model_utility", "model utility"),
    ("forget_rouge", "forget ROUGE-L"),
    ("forget_prob", "forget prob"),
    ("retain_rouge", "retain ROUGE-L"),
    ("world_facts_rouge", "world-facts ROUGE-L"),
    ("mia_mink_auc", "MIA AUC (Min-K%)"),
    ("cka_oracle/layer_2", "CKA to oracle"),
]


def row(e: dict, who: str) -> dict[str, float]:
    return {k: e[f"{who}/{k}"] for k, _ in COLUMNS if f"{who}/{k}" in e}


def mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def table(rows: dict[str, list[dict[str, float]]]) -> str:
    """One line per method; with several seeds, mean ± std over them."""
    header = "| method | n | " + " | ".join(label for _, label in COLUMNS) + " |"
    lines = [header, "|---" * (len(COLUMNS) + 2) + "|"]
    for name, seeds in rows.items():
        cells = [mean_std([r[k] for r in seeds if k in r]) if any(k in r for r in seeds) else "–" for k, _ in COLUMNS]
        lines.append(f"| {name} | {len(seeds)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--splits", nargs="+", type=float, default=[0.01, 0.05, 0.1])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--extra-seeds", nargs="*", type=int, default=[1, 2], help="more seeds for the 5 %% split")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--out", default="benchmarks/results/tofu")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    import torch

    from clframe.config import compose
    from clframe.io import atomic_write_text
    from clframe.unlearning.plots import plot_quality_utility

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = ["## TOFU protocol on a CPU (experiment=tofu_tiny, 100 authors)\n"]
    dump: dict[str, dict] = {}
    for split in args.splits:
        seeds = sorted({*args.seeds, *(args.extra_seeds if math.isclose(split, 0.05) else [])})
        rows: dict[str, list[dict[str, float]]] = {"original": [], "oracle": []}
        for seed in seeds:
            overrides = [
                *BASE,
                f"scenario.forget={split}",
                f"seed={seed}",
                f"run_dir={out / 'runs' / f'forget{split}_s{seed}'}",
                "overwrite=true",
                "logger=none",
                "progress_bar=none",
                "plots=false",
            ]
            t0 = time.perf_counter()
            eval_kwargs = {"oracle_cache": str(out / ".oracle_cache")}
            stream, learned, evaluator, exp = learn_once(compose([*overrides, "unlearning=ga"]), eval_kwargs, "tofu")
            print(f"forget {split} seed {seed}: learned in {time.perf_counter() - t0:.0f}s", flush=True)
            for method in args.methods:
                done = out / "runs" / f"forget{split}_s{seed}_{method}.json"
                t0 = time.perf_counter()
                cfg = compose([*overrides, *METHODS[method]])
                e = cached_unlearn_copy(done, cfg, stream, learned, evaluator, exp)
                rows.setdefault(method, []).append(row(e, "unlearn"))
                print(f"  {method}: {time.perf_counter() - t0:.0f}s {rows[method][-1]}", flush=True)
            rows["original"].append(row(e, "original"))
            rows["oracle"].append(row(e, "oracle"))
        rows = {"original": rows.pop("original"), **{m: rows[m] for m in args.methods}, "oracle": rows.pop("oracle")}
        dump[str(split)] = rows
        report.append(
            f"### forget {100 * split:g} % of the authors (seeds {', '.join(map(str, seeds))})\n\n{table(rows)}\n"
        )
        points = {
            name: (
                statistics.mean(r["model_utility"] for r in rs),
                statistics.mean(r["forget_quality_log10"] for r in rs),
            )
            for name, rs in rows.items()
            if rs and all("forget_quality_log10" in r for r in rs)
        }
        plot_quality_utility(points, out / f"tofu_forget{split}.png", f"forget {100 * split:g} % of the authors")
        atomic_write_text(out / "tofu.md", "\n".join(report))  # after every split: nothing is lost
        atomic_write_text(out / "tofu.json", json.dumps(dump, indent=1))
    print("\n".join(report))


if __name__ == "__main__":
    main()
