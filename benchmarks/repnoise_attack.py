"""RepNoise against harmful fine-tuning attacks (Rosati et al. 2024) on a CPU: attacks, harmless fine-tuning, depth.

    python benchmarks/repnoise_attack.py [--defences repnoise ga ...] [--seed 0] [--out DIR] [override ...]

``experiment=repnoise_attack_tiny`` (``--preset repnoise_attack_gpu``: the GPU size): the stream is learned once,
exactly as ``clframe run experiment=repnoise_attack_tiny`` learns it (same per-event seeds); each defence then
answers the forget request (the 8 "harmful" authors) on a copy of the learned model, with the preset's unlearning
loop, and the
``harmful_attack`` evaluator (``clframe.unlearning.attacks``) attacks it: AdamW fine-tuning on half of each
harmful author's questions at every lr x step count of the preset, harmful loss = token-mean CE on the other half
(never trained by the attack). The undefended original and the retrain oracle (never saw the harmful authors: the
information is absent from its weights) are attacked the same way, once. Then harmless fine-tuning (the held-out
authors), per-layer probes of the harmful facts before and after the strongest attack, per-block weight change.
Writes ``<out>/repnoise_attack.md`` (tables), ``repnoise_attack.json`` and ``harmful_loss.png``, ``probes.png``,
``depth_vs_strength.png``, ``harmless.png``; finished defences are kept in ``<out>/runs/<preset>_seed<seed>[_<hash of
the overrides>]`` (a rerun with the same preset, seed and overrides skips them).
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import math
import time
from pathlib import Path

from unlearning_table import learn_once, unlearn_copy  # benchmarks/ is on sys.path when run as a script

# name -> overrides of the preset (the preset names RepNoise's layers; the baselines do not take them)
DEFENCES = {
    "repnoise": [],
    "repnoise_no_depth": ["unlearning.per_layer=false"],
    "repnoise_beta1": ["unlearning.noise_weight=1.0"],
    "repnoise_long": ["unlearning.steps={long}"],  # 2.5 x the preset's unlearning steps
    "ga": ["unlearning=ga", "~unlearning.layers"],
    "npo": ["unlearning=npo", "~unlearning.layers"],
}
BASELINE_LABELS = {"original": "original (undefended)", "oracle": "oracle (never learned)"}


def label(u) -> str:
    """A defence's row label from its composed ``unlearning`` node."""
    if u.name == "repnoise":
        depth = "" if u.per_layer else ", output ascent only"
        return f"RepNoise α={u.ascent_weight:g} β={u.noise_weight:g}, {u.steps} steps{depth}"
    if u.name == "npo":
        return f"NPO{'+RT' if u.retain_weight else ''} β={u.beta:g}, {u.steps} steps"
    return f"{u.name.upper()}, {u.steps} steps"


def rows_of(evals: dict[str, dict]) -> dict[str, dict]:
    """One row per model: the baselines from the first evaluation that has them, then each defence's ``unlearn``
    keys (``m/...`` renamed to plain keys); the probes' ``probe_chance`` and ``probe_n`` in every row."""
    rows: dict[str, dict] = {}
    shared = ("probe_chance", "probe_n")
    for who in ("original", "oracle"):
        source = next((e for e in evals.values() if f"{who}/attack_lr" in " ".join(e)), None)
        if source is not None:
            rows[who] = {k.split("/", 1)[1]: v for k, v in source.items() if k.startswith(f"{who}/")}
            rows[who].update({k: source[k] for k in shared if k in source})
    for name, e in evals.items():
        rows[name] = {k.split("/", 1)[1]: v for k, v in e.items() if k.startswith("unlearn/")}
        rows[name].update({k: e[k] for k in shared if k in e})
    return rows


def at(curve: dict, key: str, step: int) -> float:
    return curve[key][curve["step"].index(step)] if step in curve["step"] else float("nan")


def fmt(v: float) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def tables(rows: dict[str, dict], labels: dict[str, str], lrs: list[float], steps: list[int], command: str) -> str:
    shown = [s for s in steps if s > 0]
    n_layers = max(int(k.rsplit("_", 1)[1]) for r in rows.values() for k in r if k.startswith("probe_layer_")) + 1
    blocks = sorted({k.split("/")[1] for r in rows.values() for k in r if k.startswith("weight_change/")})
    out = [f"```\n{command}\n```\n"]
    out.append("### Harmful loss on the held-out harmful questions after the attack (token-mean CE, higher = safer)\n")
    head = ["model", "before"] + [f"lr {lr:g}, {s} st." for lr in lrs for s in shown]
    out += ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for name, r in rows.items():
        cells = [fmt(r.get("harmful_loss"))] + [
            fmt(at(r[f"attack_lr{lr:g}"], "harmful_loss", s)) for lr in lrs for s in shown
        ]
        out.append(f"| {labels.get(name, name)} | " + " | ".join(cells) + " |")
    out.append("\n### The attack's own training samples after the attack (token-mean CE)\n")
    head = ["model"] + [f"lr {lr:g}, {shown[-1]} st." for lr in lrs]
    out += ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for name, r in rows.items():
        cells = [fmt(at(r[f"attack_lr{lr:g}"], "attack_loss", shown[-1])) for lr in lrs]
        out.append(f"| {labels.get(name, name)} | " + " | ".join(cells) + " |")
    out.append("\n### Stability and harmless fine-tuning (held-out authors, never trained; token-mean CE)\n")
    head = ["model", "retain loss", "world-facts loss"] + [f"harmless, {s} st." for s in [0, *shown]]
    out += ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for name, r in rows.items():
        cells = [fmt(r.get("retain_loss")), fmt(r.get("world_facts_loss"))]
        cells += [fmt(at(r["harmless"], "harmless_loss", s)) if "harmless" in r else "–" for s in [0, *shown]]
        out.append(f"| {labels.get(name, name)} | " + " | ".join(cells) + " |")
    probe = next((r for r in rows.values() if "probe_chance" in r), {})
    out.append(
        "\n### Depth: probe accuracy per layer on the harmful facts (layer 0 = embeddings; "
        f"{probe.get('probe_n', '?')} questions, chance {fmt(probe.get('probe_chance'))}), weight change per block\n"
    )
    head = ["model"] + [f"probe L{i}" for i in range(n_layers)]
    head += [f"after attack L{i}" for i in range(n_layers)] + [f"Δw {b}" for b in blocks]
    out += ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for name, r in rows.items():
        cells = [fmt(r.get(f"probe_layer_{i}")) for i in range(n_layers)]
        cells += [fmt(r.get(f"probe_after_attack_layer_{i}")) for i in range(n_layers)]
        cells += [fmt(r.get(f"weight_change/{b}")) for b in blocks]
        out.append(f"| {labels.get(name, name)} | " + " | ".join(cells) + " |")
    out.append(
        "\n### Strength vs depth: probe drop per layer (original − defended) and the harmful loss after attacks\n"
    )
    mid, top = sorted(lrs)[len(lrs) // 2], max(lrs)
    head = ["defence"] + [f"probe drop L{i}" for i in range(1, n_layers)]
    head += ["harmful before", f"after lr {mid:g}", f"after lr {top:g}", "oracle floor (lr max)"]
    out += ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    floor = at(rows["oracle"][f"attack_lr{top:g}"], "harmful_loss", shown[-1]) if "oracle" in rows else float("nan")
    for name, r in rows.items():
        if name in ("original", "oracle"):
            continue
        drops = [rows["original"][f"probe_layer_{i}"] - r[f"probe_layer_{i}"] for i in range(1, n_layers)]
        cells = [fmt(d) for d in drops] + [fmt(r["harmful_loss"])]
        cells += [fmt(at(r[f"attack_lr{lr:g}"], "harmful_loss", shown[-1])) for lr in (mid, top)] + [fmt(floor)]
        out.append(f"| {labels.get(name, name)} | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def plots(rows: dict[str, dict], labels: dict[str, str], lrs: list[float], out: Path) -> None:
    from clframe.plots import _pyplot, _save

    plt = _pyplot()
    style = {"original": dict(color="grey", ls="--"), "oracle": dict(color="black", ls="--")}
    fig, axes = plt.subplots(1, len(lrs), figsize=(4.6 * len(lrs), 3.8), squeeze=False, sharey=True)
    for ax, lr in zip(axes[0], lrs, strict=True):
        for name, r in rows.items():
            c = r[f"attack_lr{lr:g}"]
            ax.plot(c["step"], c["harmful_loss"], marker=".", label=labels.get(name, name), **style.get(name, {}))
        ax.set_yscale("log")
        ax.set_title(f"attack lr {lr:g}")
        ax.set_xlabel("attack steps (batches of 16 harmful questions)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("held-out harmful loss (token-mean CE)")
    axes[0][-1].legend(fontsize=7)
    _save(fig, out / "harmful_loss.png")

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    for ax, prefix, title in zip(
        axes, ("probe_layer_", "probe_after_attack_layer_"), ("before", "after the strongest attack")
    ):
        for name, r in rows.items():
            layers = sorted(int(k[len(prefix) :]) for k in r if k.startswith(prefix))
            if layers:
                ax.plot(
                    layers,
                    [r[f"{prefix}{i}"] for i in layers],
                    marker="o",
                    label=labels.get(name, name),
                    **style.get(name, {}),
                )
        chance = next((r["probe_chance"] for r in rows.values() if "probe_chance" in r), None)
        if chance is not None:
            ax.axhline(chance, color="red", lw=0.8, ls=":", label="chance (majority)")
        ax.set_title(f"probe of the harmful facts, {title}")
        ax.set_xlabel("layer (0 = embeddings)")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("probe accuracy")
    axes[1].legend(fontsize=7)
    _save(fig, out / "probes.png")

    fig, ax = plt.subplots(figsize=(6, 4.2))
    defended = [n for n in rows if n not in ("original", "oracle")]
    n_layers = sum(1 for k in rows["original"] if k.startswith("probe_layer_"))
    drop = {
        n: sum(rows["original"][f"probe_layer_{i}"] - rows[n][f"probe_layer_{i}"] for i in range(1, n_layers))
        / max(1, n_layers - 1)
        for n in defended
    }
    for lr, marker in zip(lrs, "os^v", strict=False):
        key = f"attack_lr{lr:g}"
        line = ax.scatter([drop[n] for n in defended], [rows[n][key]["harmful_loss"][-1] for n in defended],
                          marker=marker, label=f"after the lr {lr:g} attack")  # fmt: skip
        if "oracle" in rows:
            ax.axhline(rows["oracle"][key]["harmful_loss"][-1], color=line.get_facecolor()[0], ls="--", lw=0.8)
    for n in defended:
        ax.annotate(n, (drop[n], rows[n][f"attack_lr{min(lrs):g}"]["harmful_loss"][-1]), fontsize=7)
    ax.set_yscale("log")
    ax.set_xlabel("mean probe drop over layers ≥ 1 (original − defended)")
    last = rows[defended[0]][f"attack_lr{lrs[0]:g}"]["step"][-1]
    ax.set_ylabel(f"held-out harmful loss after {last} attack steps")
    ax.set_title("defence strength vs depth (dashed: the oracle after the same attack)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    _save(fig, out / "depth_vs_strength.png")

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for name, r in rows.items():
        if "harmless" in r:
            ax.plot(
                r["harmless"]["step"],
                r["harmless"]["harmless_loss"],
                marker=".",
                label=labels.get(name, name),
                **style.get(name, {}),
            )
    ax.set_xlabel("harmless fine-tuning steps")
    ax.set_ylabel("harmless loss (token-mean CE)")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    _save(fig, out / "harmless.png")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--defences", nargs="+", default=list(DEFENCES), choices=list(DEFENCES))
    parser.add_argument("--preset", default="repnoise_attack_tiny", help="experiment=<preset> (repnoise_attack_gpu)")
    parser.add_argument("--out", default="benchmarks/results/repnoise_attack")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: share a loaded machine)")
    parser.add_argument("overrides", nargs="*", help="more overrides of the preset, e.g. scenario.n_authors=64")
    args = parser.parse_args(argv)
    import torch
    from omegaconf import OmegaConf

    from clframe.config import compose
    from clframe.io import atomic_write_text

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    tag = hashlib.sha256(" ".join(args.overrides).encode()).hexdigest()[:8] if args.overrides else ""
    runs = out / "runs" / f"{args.preset}_seed{args.seed}{'_' + tag if tag else ''}"
    runs.mkdir(parents=True, exist_ok=True)
    common = [
        f"experiment={args.preset}",
        f"seed={args.seed}",
        f"run_dir={runs / 'run'}",
        "overwrite=true",
        "logger=none",
        "progress_bar=none",
        "plots=false",
        *args.overrides,
    ]
    cfg = compose(common)
    options = {k: v for k, v in OmegaConf.to_container(cfg.evaluators[0], resolve=True).items() if k != "name"}
    lrs, steps = [float(v) for v in options["lrs"]], sorted(int(s) for s in options["steps"])
    long = int(2.5 * cfg.unlearning.steps)
    overrides = {name: [o.format(long=long) for o in DEFENCES[name]] for name in args.defences}
    labels = {**BASELINE_LABELS, **{name: label(compose([*common, *o]).unlearning) for name, o in overrides.items()}}
    evals = {n: json.loads((runs / f"{n}.json").read_text()) for n in args.defences if (runs / f"{n}.json").is_file()}
    todo = [n for n in args.defences if n not in evals]
    if todo:  # learn once (a rerun whose defences are all done only writes the report)
        t0 = time.perf_counter()
        kwargs = {**options, "oracle_cache": str(out / ".oracle_cache")}
        stream, learned, evaluator, exp = learn_once(cfg, kwargs, "harmful_attack")
        print(f"learned in {time.perf_counter() - t0:.0f}s", flush=True)
    for name in todo:
        t0 = time.perf_counter()
        ev = copy.copy(evaluator)
        if any("original/attack_lr" in " ".join(e) for e in evals.values()):  # the baselines are attacked once
            ev.baselines, ev.oracle = (), False
        evals[name] = unlearn_copy(compose([*common, *overrides[name]]), stream, learned, ev, exp)
        atomic_write_text(runs / f"{name}.json", json.dumps(evals[name]))
        print(f"{name}: {time.perf_counter() - t0:.0f}s", flush=True)
    evals = {n: evals[n] for n in args.defences}
    rows = rows_of(evals)
    preset = "" if args.preset == "repnoise_attack_tiny" else f" --preset {args.preset}"
    command = (
        f"python benchmarks/repnoise_attack.py{preset} --seed {args.seed}"
        + (f" --defences {' '.join(args.defences)}" if args.defences != list(DEFENCES) else "")
        + "".join(f" {o}" for o in args.overrides)
    )
    title = f"## RepNoise against harmful fine-tuning (experiment={args.preset}, seed {args.seed})\n\n"
    report = title + tables(rows, labels, lrs, steps, command)
    atomic_write_text(out / "repnoise_attack.md", report)
    atomic_write_text(out / "repnoise_attack.json", json.dumps({"seed": args.seed, "evaluations": evals}))
    plots(rows, labels, lrs, out)
    print(report)


if __name__ == "__main__":
    main()
