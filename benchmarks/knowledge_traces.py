"""Parametric knowledge traces (ConceptVectors, Hong et al. 2024) of every unlearning method on the TOFU CPU protocol.

    python benchmarks/knowledge_traces.py                          # experiment=tofu_tiny, seed 0, six methods
    python benchmarks/knowledge_traces.py --methods ga npo --seeds 0 1

Stream: ``experiment=tofu_tiny`` (a 2-layer Llama-style model memorises 40 fictitious authors x 10 questions
and 40 world facts; a request forgets the last 10 % of the authors). Per seed the learning runs once exactly as
``clframe run experiment=tofu_tiny unlearning=<method> seed=<seed>`` runs it (``learn_once``); each method then
answers the request on a copy (``unlearn_copy``) and the ``tofu`` evaluator, with ``traces: true``, measures
behaviour (forget quality, model utility, forget probability) and the change of the concept vectors of the
forgotten authors' names and, as the control, of the retained authors' names
(:mod:`clframe.unlearning.knowledge_traces`). One more row ablates the forgotten authors' concept vectors of the
original directly (no training), measured by the same evaluator.

The ablation table is on the original model: for every author (its name tokens) and every single-token
attribute value, its top-``k`` concept vectors are zeroed (or set to their layer's mean value vector), and the
drop of the log-probability of the concept's tokens in its own answers is compared with ablating as many random
value vectors of the same layers and with other concepts' tokens in other answers.

Writes ``<out>/knowledge_traces.md`` (tables), ``knowledge_traces.json`` and ``knowledge_traces.png``.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path

from unlearning_table import cached_unlearn_copy, learn_once  # benchmarks/ is on sys.path when run as a script

METHODS = ("ga", "graddiff", "npo", "simnpo", "repnoise", "finetune_retain")
BASE = ["experiment=tofu_tiny"]
EVAL_KWARGS = {"traces": True}  # trace_k 4, trace_threshold 3.0: the evaluator's defaults
COLUMNS = [  # (key in the evaluation without the model prefix, label, needs the unlearned model)
    ("forget_quality_log10", "forget quality (log10 p)", False),
    ("model_utility", "model utility", False),
    ("forget_prob", "forget prob", False),
    ("trace_cos", "trace cos (forget)", True),
    ("retain_trace_cos", "trace cos (retain)", True),
    ("trace_cos_all", "cos, all vectors", True),
    ("trace_norm_ratio", "norm ratio (forget)", True),
    ("trace_score_drop", "score drop (forget)", True),
    ("retain_trace_score_drop", "score drop (retain)", True),
    ("trace_vector_score_drop", "score drop, vector only (forget)", True),
    ("trace_jaccard", "top-token Jaccard (forget)", True),
    ("trace_act_ratio", "activation ratio (forget)", True),
    ("retain_trace_act_ratio", "activation ratio (retain)", True),
]
ABLATION_KS = (1, 4, 16)
ABLATE_ROW = "ablate concept vectors"  # the forgotten authors' trace_k concept vectors zeroed in the original
MODES = ("zero", "mean")


def row(e: dict, who: str) -> dict[str, float]:
    return {k: e[f"{who}/{k}"] for k, _, trace in COLUMNS if (who == "unlearn" or not trace) and f"{who}/{k}" in e}


def mean_std(values: list[float]) -> str:
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def table(rows: dict[str, list[dict[str, float]]]) -> str:
    lines = ["| model | n | " + " | ".join(label for _, label, _ in COLUMNS) + " |", "|---" * (len(COLUMNS) + 2) + "|"]
    for name, seeds in rows.items():
        cells = [mean_std([r[k] for r in seeds if k in r]) for k, _, _ in COLUMNS]
        lines.append(f"| {name} | {len(seeds)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------- concepts
def author_concepts(stream, exp, learned):
    """Every author's name tokens (from its questions), with its samples."""
    from clframe.unlearning import knowledge_traces as K
    from clframe.unlearning.tofu_eval import author_samples

    data = author_samples(stream, exp)
    names = K.subject_tokens(data.x, data.y, exclude=learned.backbone.tokenizer.all_special_ids)
    return {f"author {c}": (names[c], data.x[data.y == c], data.x[data.y != c]) for c in sorted(names)}


def value_concepts(stream, exp, learned, min_samples: int = 2):
    """Every attribute value that is one token and the answer of at least ``min_samples`` trained questions."""
    import torch

    from clframe.scenarios.text_corpus import attribute_values
    from clframe.unlearning import knowledge_traces as K
    from clframe.unlearning.tofu_eval import author_samples

    ex, tok = stream.extras, learned.backbone.tokenizer
    data = author_samples(stream, exp)
    attrs = [ex["attributes"][int(i)] for i in data.ids]
    labels = ex["labels"][data.ids]
    out = {}
    for attribute in sorted(set(attrs)):
        same = torch.tensor([a == attribute for a in attrs])
        for label in sorted(set(labels[same].tolist())):
            value = attribute_values(attribute)[label]
            tokens = K.text_tokens(tok, value)
            own = same & (labels == label)
            if len(tok(" " + value, add_special_tokens=False)["input_ids"]) == 1 and int(own.sum()) >= min_samples:
                out[f"{attribute}={value}"] = (tokens, data.x[own], data.x[same & ~own])
    return out


def ablation_table(learned, concepts: dict, k: int, mode: str, threshold: float | None, seed: int) -> dict:
    """Mean over concepts of :func:`ablation_effect` at the concept's token positions and on whole answers."""
    import torch

    from clframe.unlearning import knowledge_traces as K

    found = K.find_concept_vectors(learned, [t for t, _, _ in concepts.values()], k=k, threshold=threshold)
    gen = torch.Generator().manual_seed(seed)
    fields: dict[str, list[float]] = {}
    for (tokens, own, other), f in zip(concepts.values(), found):
        if not len(f):
            continue
        other = other[torch.randperm(len(other), generator=gen)[:100]]  # the control: other concepts' answers
        others_tokens = K.concept_positions(other, torch.cat([t for t, _, _ in concepts.values()]))
        others_tokens &= ~K.concept_positions(other, tokens)
        at = K.ablation_effect(
            learned,
            f,
            own,
            positions=K.concept_positions(own, tokens),
            control_x=other,
            control_positions=others_tokens,
            n_random=5,
            mode=mode,
            seed=seed,
        )
        whole = K.ablation_effect(learned, f, own, n_random=5, mode=mode, seed=seed)
        for key, value in {**at, **{f"answer_{k}": v for k, v in whole.items() if "drop" in k}}.items():
            fields.setdefault(key, []).append(value)
    fields["vectors"] = fields.pop("k", [])  # vectors found per concept (the threshold may leave fewer than k)
    return {"n_concepts": len(fields["vectors"]), **{k: statistics.mean(v) for k, v in fields.items() if v}}


def ablation_markdown(results: list[dict]) -> str:
    head = (
        "| concepts | n | k (found) | mode | log p before | drop: concept vectors | drop: random vectors (± std) | "
        "drop: other concepts' tokens | whole answer: concept vectors | whole answer: random vectors |"
    )
    lines = [head, "|---" * 10 + "|"]
    for r in results:
        lines.append(
            f"| {r['kind']} | {r['n_concepts']} | {r['k']} ({r['vectors']:.1f}) | {r['mode']} | "
            f"{r['logp_before']:.4f} | "
            f"{r['concept_drop']:.4f} | {r['random_drop']:.4f} ± {r['random_drop_std']:.4f} | "
            f"{r.get('control_drop', float('nan')):.4f} | {r['answer_concept_drop']:.4f} | "
            f"{r['answer_random_drop']:.4f} |"
        )
    return "\n".join(lines)


def plot(rows: dict, ablation: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.5))
    methods = [m for m in rows if m not in ("original", "oracle")]
    series = [("forget_prob", "forget prob (behaviour)"), ("trace_cos", "concept-vector cosine"),
              ("trace_act_ratio", "concept-vector activation ratio")]  # fmt: skip
    width = 0.8 / len(series)
    for i, (key, label) in enumerate(series):
        values = [statistics.mean(r[key] for r in rows[m] if key in r) if rows[m] else 0 for m in methods]
        left.bar([j + i * width for j in range(len(methods))], values, width, label=label)
    left.axhline(statistics.mean(r["forget_prob"] for r in rows["original"]), color="k", ls="--", lw=1)
    left.set_xticks([j + width for j in range(len(methods))], methods, rotation=20, ha="right")
    left.set_title("forgotten authors: behaviour vs parametric trace (original: dashed)")
    left.legend(fontsize=8)
    picked = [r for r in ablation if r["k"] == 4 and r["mode"] == "zero"]
    labels = [r["kind"] for r in picked]
    for i, (key, label) in enumerate(
        [("concept_drop", "concept vectors"), ("random_drop", "random vectors"), ("control_drop", "other concepts")]
    ):
        right.bar([j + i * 0.27 for j in range(len(picked))], [max(r.get(key, 0), 1e-6) for r in picked], 0.27,
                  label=label)  # fmt: skip
    right.set_yscale("log")
    right.set_xticks([j + 0.27 for j in range(len(picked))], labels)
    right.set_ylabel("drop of log p (nats / token)")
    right.set_title("original, 4 vectors per concept zeroed: at its tokens")
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--out", default="benchmarks/results/knowledge_traces")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 shares a busy machine best)")
    args = parser.parse_args(argv)
    import torch

    from clframe.config import compose
    from clframe.io import atomic_write_text
    from clframe.runner import eval_device
    from clframe.unlearning import knowledge_traces as K

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows: dict[str, list[dict[str, float]]] = {"original": [], **{m: [] for m in args.methods}}
    rows[ABLATE_ROW] = []
    rows["oracle"] = []
    ablation: list[dict] = []
    for seed in args.seeds:
        overrides = [
            *BASE,
            f"seed={seed}",
            f"run_dir={out / 'runs' / f's{seed}'}",
            "overwrite=true",
            "logger=none",
            "progress_bar=none",
            "plots=false",
        ]
        t0 = time.perf_counter()
        kwargs = {"oracle_cache": str(out / ".oracle_cache"), **EVAL_KWARGS}
        cfg = compose([*overrides, "unlearning=ga"])
        stream, learned, evaluator, exp = learn_once(cfg, kwargs, "tofu")
        print(f"seed {seed}: learned in {time.perf_counter() - t0:.0f}s", flush=True)
        for method in args.methods:
            done = out / "runs" / f"s{seed}_{method}.json"
            t0 = time.perf_counter()
            cfg = compose([*overrides, f"unlearning={method}"])
            e = cached_unlearn_copy(done, cfg, stream, learned, evaluator, exp)
            rows[method].append(row(e, "unlearn"))
            print(f"  {method}: {time.perf_counter() - t0:.0f}s {rows[method][-1]}", flush=True)
        rows["original"].append(row(e, "original"))
        rows["oracle"].append(row(e, "oracle"))
        # the forgotten authors' concept vectors (the ones the trace columns watch) ablated in the original
        t0 = time.perf_counter()
        concepts = author_concepts(stream, exp, learned)
        forgotten = [concepts[f"author {c}"][0] for c in sorted(set(exp.forget.y.tolist()))]
        found = K.find_concept_vectors(learned, forgotten, k=evaluator.trace_k, threshold=evaluator.trace_threshold)
        layer, index = torch.cat([f.layer for f in found]), torch.cat([f.index for f in found])
        model = copy.deepcopy(learned)
        with K.ablated(model, layer, index):
            e = copy.copy(evaluator).after_event(model, stream, exp, eval_device(cfg))
        rows[ABLATE_ROW].append(row(e, "unlearn"))
        print(f"  ablation row: {time.perf_counter() - t0:.0f}s", flush=True)
        t0 = time.perf_counter()
        values = value_concepts(stream, exp, learned)
        for kind, group in (("author names", concepts), ("attribute values", values)):
            for k in ABLATION_KS:
                for mode in MODES:
                    r = ablation_table(learned, group, k, mode, evaluator.trace_threshold, seed)
                    ablation.append({"kind": kind, "seed": seed, "k": k, "mode": mode, **r})
        print(f"  ablation table: {time.perf_counter() - t0:.0f}s", flush=True)
    report = [
        "## Parametric knowledge traces (experiment=tofu_tiny, traces: true)\n",
        f"### behaviour and concept vectors per method (seeds {', '.join(map(str, args.seeds))})\n",
        table(rows),
        "\n### ablating concept vectors in the original (mean over concepts"
        + (" and seeds" if len(args.seeds) > 1 else "")
        + "; drops in nats per token of the mean log-probability)\n",
        ablation_markdown(_average(ablation)),
        "",
    ]
    atomic_write_text(out / "knowledge_traces.md", "\n".join(report))
    atomic_write_text(out / "knowledge_traces.json", json.dumps({"rows": rows, "ablation": ablation}, indent=1))
    plot(rows, _average(ablation), out / "knowledge_traces.png")
    print("\n".join(report))


def _average(ablation: list[dict]) -> list[dict]:
    """Per (kind, k, mode): the mean over seeds."""
    groups: dict[tuple, list[dict]] = {}
    for r in ablation:
        groups.setdefault((r["kind"], r["k"], r["mode"]), []).append(r)
    out = []
    for (kind, k, mode), rs in groups.items():
        keys = {key for r in rs for key in r if isinstance(r[key], (int, float)) and key not in ("seed", "k")}
        out.append({"kind": kind, "k": k, "mode": mode, **{key: statistics.mean(r[key] for r in rs) for key in keys}})
    return out


if __name__ == "__main__":
    main()
