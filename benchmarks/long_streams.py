"""Long streams: memory of permuted / rotated MNIST and the per-step cost of separate EWC
as the number of experiences grows. Writes benchmarks/results/long_streams.md.

1. Memory: a fresh subprocess per scenario and size (10 / 50 / 100 experiences) builds the stream and
   runs two evaluation-like passes over every test set (slices of 2,048 through an MLP 784-400-400-10,
   as the runner after each event); reported: peak RSS (``ru_maxrss``) at the end and after importing
   clframe and loading MNIST (before building). ``eager`` = the former behaviour, every experience's
   inputs materialised at build time.
2. Speed, interleaved in one process (best of 5): one training epoch on a permuted experience (batch 128,
   SGD on the same MLP) and one evaluation pass over 10 permuted / rotated test sets, eager vs lazy.
3. Separate EWC: per-step time (``training_loss`` + backward, batch 128, MLP 784-400-400-10) after 1 and
   after 50 experiences of permuted MNIST, for the merged quadratic and the former sum of one penalty per
   experience, in one process; checkpoint size (``torch.save(checkpoint_state())``). Between experiences
   the weights are moved by noise (a stand-in for training), Fisher from 200 samples.

    CLFRAME_DATA_ROOT=/work/shared/data .venv/bin/python benchmarks/long_streams.py [--sizes 10 50 100]
"""

from __future__ import annotations

import argparse
import io
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

OUT = Path(__file__).parent / "results" / "long_streams.md"
COMMAND = "CLFRAME_DATA_ROOT=/work/shared/data .venv/bin/python benchmarks/long_streams.py"


def mlp():
    import torch
    from torch import nn

    torch.manual_seed(0)
    return nn.Sequential(
        nn.Flatten(), nn.Linear(784, 400), nn.ReLU(), nn.Linear(400, 400), nn.ReLU(), nn.Linear(400, 10)
    )


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def build_stream(scenario: str, n: int, mode: str):
    """``mode``: ``lazy`` (default scenario), ``eager`` (materialised, the former behaviour) or ``cache=<MB>``."""
    from clframe.registry import SCENARIOS, load_plugins
    from clframe.stream import TensorData

    load_plugins()
    spec = {"name": scenario, "n_experiences": n}
    if scenario == "rotated" and mode.startswith("cache="):
        spec["cache_mb"] = float(mode.split("=")[1])
    stream = SCENARIOS.build(spec, seed=0)
    if mode == "eager":
        for e in stream.experiences:
            for part in ("train", "test"):
                d = getattr(e, part)
                setattr(e, part, TensorData(d.x[:], d.y.clone(), d.ids.clone(), d.task.clone()))
    return stream


def eval_pass(stream, model) -> None:
    """What the runner does after every event: every test set, in slices of 2,048, through the model."""
    import torch

    with torch.no_grad():
        for e in stream.experiences:
            for i in range(0, len(e.test), 2048):
                model(e.test.x[i : i + 2048])


def child(scenario: str, n: int, mode: str) -> None:
    from clframe.data import load_dataset
    from clframe.registry import load_plugins

    load_plugins()
    load_dataset("mnist")
    base = peak_mb()
    stream = build_stream(scenario, n, mode)
    model = mlp().eval()
    for _ in range(2):
        eval_pass(stream, model)
    print(json.dumps({"base_mb": base, "peak_mb": peak_mb()}))


def memory(sizes: list[int]) -> list[str]:
    cases = [("permuted", "lazy", sizes), ("permuted", "eager", sizes[:1])]
    for mode in ("cache=1024", "cache=0", "eager"):
        cases.append(("rotated", mode, sizes))
    rows = [
        "| scenario | inputs | experiences | peak RSS (MB) | peak RSS before building (MB) | stream + passes (MB) |",
        "|---|---|---|---|---|---|",
    ]
    for scenario, mode, ns in cases:
        for n in ns:
            cmd = [sys.executable, __file__, "--child", scenario, str(n), mode]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode:
                raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            label = {"lazy": "lazy (per batch)", "eager": "eager (former)"}.get(mode, f"lazy, cache_mb={mode[6:]}")
            if scenario == "rotated" and mode == "cache=1024":
                label += " (default)"
            rows.append(
                f"| {scenario} | {label} | {n} | {r['peak_mb']:.0f} | {r['base_mb']:.0f} "
                f"| {r['peak_mb'] - r['base_mb']:.0f} |"
            )
            print(rows[-1], flush=True)
    return rows


def best_of(variants: dict, rounds: int) -> dict[str, float]:
    """Best time of each ``variants[name]()`` over ``rounds`` interleaved rounds (after one warm-up call)."""
    times: dict[str, list[float]] = {name: [] for name in variants}
    for fn in variants.values():
        fn()
    for _ in range(rounds):
        for name, fn in variants.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: min(ts) for name, ts in times.items()}


def speed(rounds: int = 5) -> list[str]:
    import torch
    import torch.nn.functional as F

    from clframe.stream import TensorLoader

    def epoch(stream) -> None:
        model = mlp()
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        for batch in TensorLoader(stream.experiences[1].train, 128, seed=0):
            loss = F.cross_entropy(model(batch["x"]), batch["y"])
            opt.zero_grad()
            loss.backward()
            opt.step()

    model = mlp().eval()
    perm = {mode: build_stream("permuted", 10, mode) for mode in ("eager", "lazy")}
    rot = {mode: build_stream("rotated", 10, mode) for mode in ("eager", "cache=1024", "cache=0")}
    train = best_of({mode: (lambda s=s: epoch(s)) for mode, s in perm.items()}, rounds)
    ev_perm = best_of({mode: (lambda s=s: eval_pass(s, model)) for mode, s in perm.items()}, rounds)
    ev_rot = best_of({mode: (lambda s=s: eval_pass(s, model)) for mode, s in rot.items()}, rounds)
    names = {"eager": "eager (former)", "lazy": "lazy (per batch)", "cache=1024": "lazy, cache_mb=1024 (default)"}
    names["cache=0"] = "lazy, cache_mb=0 (rotate per batch)"

    def row(what, times, mode):
        return f"| {what} | {names[mode]} | {times[mode]:.3f} | {times[mode] / times['eager']:.2f} |"

    return [
        f"Interleaved in one process, best of {rounds} rounds (after a warm-up round).",
        "",
        "| measurement | inputs | seconds | vs eager |",
        "|---|---|---|---|",
        *(row("permuted: one epoch of experience 1, 469 SGD steps (batch 128)", train, m) for m in perm),
        *(row("permuted, 10 experiences: one evaluation pass over all test sets", ev_perm, m) for m in perm),
        *(row("rotated, 10 experiences: one evaluation pass over all test sets", ev_rot, m) for m in rot),
    ]


def ewc_cost(n: int = 50, steps: int = 30) -> list[str]:
    import torch

    from clframe.config import compose
    from clframe.runner import build
    from clframe.strategies.losses import weighted_drift
    from clframe.stream import TensorLoader

    cfg = compose(
        [
            "scenario=permuted_mnist",
            f"scenario.n_experiences={n}",
            "strategy=ewc",
            "strategy.fisher_samples=200",
            "logger=none",
            "progress_bar=none",
            "plots=false",
            "run_dir=/tmp/clframe_long_streams_bench",
        ]
    )
    stream, ewc = build(cfg)
    batch = next(iter(TensorLoader(stream.experiences[0].train, 128, seed=0)))
    pairs = []  # what the former EWC kept: one (Fisher, anchor) per experience
    add = ewc.add_anchor
    ewc.add_anchor = lambda f, t: (pairs.append((f, t)), add(f, t))
    params = dict(ewc.named_parameters())

    def former_loss(b):
        ce = torch.nn.functional.cross_entropy(ewc(b["x"], b["task"]), b["y"])
        return ce + 0.5 * ewc.lam * sum(weighted_drift(ewc, f, t) for f, t in pairs)

    def step_time(loss_fn) -> float:
        ts = []
        for _ in range(steps):
            t0 = time.perf_counter()
            loss_fn(batch).backward()
            ts.append(time.perf_counter() - t0)
            ewc.zero_grad()
        return statistics.median(ts)

    def size(obj) -> int:
        buf = io.BytesIO()
        torch.save(obj, buf)
        return len(buf.getvalue())

    gen = torch.Generator().manual_seed(0)
    res = {}
    ewc.train()
    for k, exp in enumerate(stream.experiences, 1):
        with torch.no_grad():
            for p in params.values():
                p.add_(0.01 * torch.randn(p.shape, generator=gen))
        ewc.after_experience(exp)
        if k in (1, n):
            merged, former = [], []
            step_time(ewc.training_loss), step_time(former_loss)  # warm-up
            for _ in range(5):  # interleaved
                merged.append(step_time(ewc.training_loss))
                former.append(step_time(former_loss))
            new_p, old_p = ewc.penalty(), 0.5 * ewc.lam * sum(weighted_drift(ewc, f, t) for f, t in pairs)
            g_new = torch.autograd.grad(new_p, list(params.values()))
            g_old = torch.autograd.grad(old_p, list(params.values()))
            grad_err = max(float((a - b).abs().max() / b.abs().max()) for a, b in zip(g_new, g_old))
            res[k] = {
                "merged": min(merged),
                "former": min(former),
                "ckpt_merged": size(ewc.checkpoint_state()),
                "ckpt_former": size({"anchors": [{"fisher": f, "theta": t} for f, t in pairs]}),
                "rel_value": abs(float(new_p) - float(old_p)) / abs(float(old_p)) if float(old_p) else 0.0,
                "grad_err": grad_err,
            }
    model_mb = size(ewc.state_dict()) / 2**20
    a, b = res[1], res[n]
    mb = 2**20
    return [
        f"| EWC penalty form | step at 1 exp (ms) | step at {n} exps (ms) | ratio {n}/1 | state at 1 exp (MB) "
        f"| state at {n} exps (MB) |",
        "|---|---|---|---|---|---|",
        f"| merged quadratic (now) | {a['merged'] * 1e3:.2f} | {b['merged'] * 1e3:.2f} | "
        f"{b['merged'] / a['merged']:.2f} | {a['ckpt_merged'] / mb:.2f} | {b['ckpt_merged'] / mb:.2f} |",
        f"| sum over experiences (former) | {a['former'] * 1e3:.2f} | {b['former'] * 1e3:.2f} | "
        f"{b['former'] / a['former']:.2f} | {a['ckpt_former'] / mb:.2f} | {b['ckpt_former'] / mb:.2f} |",
        "",
        f"Model weights: {model_mb:.2f} MB. Merged vs former at {n} experiences: penalty value relative difference "
        f"{b['rel_value']:.1e}, gradient max abs difference / max abs gradient {b['grad_err']:.1e} (float32).",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 50, 100])
    parser.add_argument("--child", nargs=3, metavar=("SCENARIO", "N", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    import warnings

    warnings.filterwarnings("ignore")
    if args.child:
        child(args.child[0], int(args.child[1]), args.child[2])
        return
    import torch

    lines = [
        "# Long streams: memory per experience (permuted / rotated MNIST) and separate EWC's per-step cost",
        "",
        "```",
        COMMAND,
        "```",
        "",
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU; a shared machine (another job was "
        "using the CPU): times are indicative, ratios within a table come from interleaved runs.",
        "",
        "## Memory: build the stream, then two evaluation-like passes over every test set",
        "",
        "A fresh process per row (``ru_maxrss``); importing torch + clframe and loading MNIST is the baseline. The "
        "eager permuted row stops at the first size (the former code needed about 215 MB per experience: 8 GB at 30). "
        "Times are in the next section: separate processes on this shared machine are not comparable.",
        "",
        *memory(args.sizes),
        "",
        "## Speed (10 experiences)",
        "",
        *speed(),
        "",
        "## Separate EWC on permuted MNIST",
        "",
        *ewc_cost(),
        "",
    ]
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
