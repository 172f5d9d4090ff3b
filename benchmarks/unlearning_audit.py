"""Audit of the unlearning contracts on every registered strategy (the measurements behind
benchmarks/RESULTS.md, "Unlearning contracts").

For each strategy, ``scenario=unlearning_digits`` (learn 0-1, 2-3, forget class 1, learn 4-5, forget 30 %
of digits 2-3, learn 6-7, 8-9), 5 epochs per experience, batch 32, buffers of 100 samples and
``unlearning=ga`` (none for strategies that answer exactly): forgotten ids still held after each request
(declared stores + everything reachable), distinct forgotten ids fed to training after their request
(recorded at the loader), how each request was answered, or the error. Then NPO's loss at step 0 on a
BatchNorm CNN (no-update value (2/β)·log 2 = 2.7726 for β = 0.5), and combinations that must be refused
before anything is written.

    python benchmarks/unlearning_audit.py            # writes benchmarks/results/unlearning_audit.md
"""

from __future__ import annotations

import argparse
import math
import tempfile
from pathlib import Path

# more steps than the scenario default (5 epochs, batch 32); each strategy keeps its own lr (lr 0.05 with
# momentum, as in experiment=unlearning_digits, makes EWC and DER++ diverge after gradient ascent)
PRESET = ["trainer.max_epochs=5", "strategy.batch_size=32"]
# gradient ascent (lr 0.01, 100 steps) leaves the small MLP dead (naive ends at chance); the quadratic
# penalties of SI and MAS then diverge to NaN in the next experience unless gradients are clipped
OVERRIDES = {"si": ["trainer.gradient_clip_val=1.0"], "mas": ["trainer.gradient_clip_val=1.0"]}


def audit_strategy(name: str, tmp: Path, unlearning: str = "ga") -> dict:
    import torch

    from clframe import stores
    from clframe.config import compose
    from clframe.registry import STRATEGIES
    from clframe.runner import build, run

    cls = STRATEGIES.get(name)
    setting = "class" if "class" in cls.capabilities.settings else "task"
    unl = [f"unlearning={unlearning}"] if cls.capabilities.gradient_unlearning else []
    buffer = ["strategy.buffer_size=100"] if "buffer_size" in compose([f"strategy={name}"]).strategy else []
    cfg = compose(
        [f"run_dir={tmp / name}", "logger=none", "progress_bar=none", "plots=false", "scenario=unlearning_digits",
         f"scenario.base.setting={setting}", f"strategy={name}", *buffer, *unl, *PRESET, *OVERRIDES.get(name, [])]
    )  # fmt: skip
    fed: dict[int, list[torch.Tensor]] = {}
    held: list[int] = []
    original, purge = cls.train_dataloader_for, stores.purge_and_verify

    def recording(self, exp):
        loader = original(self, exp)
        return None if loader is None else stores.WatchedLoader(loader, record=fed.setdefault(exp.id, []))

    def counting(strategy, exp, forgotten):
        report = purge(strategy, exp, forgotten)
        held.append(sum(stores.held_forgotten(strategy, forgotten).values()))
        return report

    cls.train_dataloader_for, stores.purge_and_verify = recording, counting
    try:
        result = run(cfg)
    except Exception as err:  # noqa: BLE001  (an audit reports every failure)
        return {"strategy": name, "setting": setting, "error": f"{type(err).__name__}: {str(err)[:150]}"}
    finally:
        cls.train_dataloader_for, stores.purge_and_verify = original, purge
    stream, _ = build(cfg)
    fed_after = set()
    for req in result["forget_requests"]:
        gone = stream.forgotten_until(req["id"])
        for exp_id, parts in fed.items():
            if exp_id > req["id"] and parts:
                ids = torch.cat(parts)
                fed_after |= set(ids[torch.isin(ids, gone)].tolist())
    return {
        "strategy": name,
        "setting": setting,
        "answers": ", ".join(r["answer"] for r in result["forget_requests"]),
        "held_after_requests": sum(held),
        "fed_after_request": len(fed_after),
        "stores": ", ".join(sorted(result["forget_requests"][0]["purged"])) or "–",
        "avg_acc": result["metrics"]["cl/avg_acc"],
        "forgetting": result["metrics"]["cl/forgetting"],
    }


def npo_step0(name: str, tmp: Path) -> float | str:
    """NPO's loss at step 0 on a 2-experience digits CNN with BatchNorm (MLP where the strategy needs one)."""
    import torch

    from clframe.config import compose
    from clframe.errors import ConfigError
    from clframe.fit import Engine
    from clframe.registry import STRATEGIES, UNLEARNERS
    from clframe.runner import build, learn_experience, start_event
    from clframe.stream import Experience, TensorData

    cls = STRATEGIES.get(name)
    if not cls.capabilities.gradient_unlearning:
        return "exact (no gradients)"
    setting = "class" if "class" in cls.capabilities.settings else "task"
    # the strategy's own optimiser values and one epoch, not split_digits' training defaults (the audit's protocol)
    own = compose([f"strategy={name}", "scenario=split_blobs"]).strategy
    pinned = [f"strategy.lr={own.lr}", f"strategy.batch_size={own.batch_size}", "trainer.max_epochs=1"]
    for backbone in (["backbone=cnn", "backbone.channels=[8,16]"], ["backbone=mlp"]):
        cfg = compose(
            [f"run_dir={tmp / ('npo_' + name)}", "logger=none", "progress_bar=none", "scenario=split_digits",
             f"scenario.setting={setting}", "scenario.n_experiences=2", f"strategy={name}", *backbone, *pinned]
        )  # fmt: skip
        try:
            stream, strategy = build(cfg)
            for exp in stream.experiences:
                start_event(strategy, 0, exp)
                learn_experience(Engine.from_config(cfg), strategy, exp)
        except ConfigError:
            continue
        data = TensorData.concat([e.train for e in stream.experiences])
        forget = data.subset(torch.arange(0, len(data), 7))
        npo = UNLEARNERS.build({"name": "npo", "steps": 1, "retain_weight": 0.0, "beta": 0.5, "eval_every": 0})
        losses, loss = [], npo.loss
        npo.loss = lambda s, f, r: losses.append(loss(s, f, r)) or losses[-1]  # noqa: B023  (called in this iteration)
        npo(strategy, Experience(9, "forget", None, None, forget.classes(), forget=forget, name="f"))
        losses = [float(v.detach()) for v in losses]
        return f"{losses[0]:.4f} ({backbone[0].split('=')[1]})"
    return "no supported backbone"


REFUSED = [
    ["scenario=split_digits", "strategy=clr"],  # class-IL without a task id
    ["scenario=split_digits", "strategy=hyperinterval"],
    ["scenario=unlearning_digits", "strategy=nmc", "unlearning=ga"],  # nothing to train
    ["scenario=unlearning_digits", "strategy=replay"],  # forget requests, no unlearning method
    ["scenario=unlearning_digits", "scenario.base.setting=task", "strategy=clr"],  # partial request, no unlearner
]


def refused(extra: list[str], run_dir: Path) -> str:
    from clframe.config import compose
    from clframe.errors import ConfigError
    from clframe.runner import run

    try:
        run(compose([f"run_dir={run_dir}", "logger=none", "progress_bar=none", "plots=false", *extra]))
    except ConfigError as err:
        return f"{'yes' if run_dir.exists() else 'no'} | `{err}`"
    return "yes | (not refused)"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/unlearning_audit.md")
    parser.add_argument("--strategies", nargs="*", default=None)
    args = parser.parse_args(argv)
    import torch

    from clframe.registry import STRATEGIES

    torch.set_num_threads(1)
    names = args.strategies or STRATEGIES.names()
    lines = [
        "| strategy | setting | answers | forgotten ids held after requests | forgotten ids fed after request "
        "| stores purged | NPO loss at step 0 | avg acc | forgetting |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            row, npo = audit_strategy(name, Path(tmp)), npo_step0(name, Path(tmp))
            if "error" in row:
                lines.append(f"| {name} | {row['setting']} | error: {row['error']} | | | | {npo} | | |")
            else:
                lines.append(
                    f"| {name} | {row['setting']} | {row['answers']} | {row['held_after_requests']} | "
                    f"{row['fed_after_request']} | {row['stores']} | {npo} | {100 * row['avg_acc']:.1f} | "
                    f"{100 * row['forgetting']:.1f} |"
                )
            print(lines[-1], flush=True)
        lines += ["", *(f"{n}: {' '.join(o)} (see OVERRIDES in the script)" for n, o in OVERRIDES.items())]
        lines += ["", "Combinations that must be refused before anything is written:", ""]
        lines += ["| overrides | run directory created | error |", "|---|---|---|"]
        for extra in REFUSED:
            run_dir = Path(tmp) / ("refused_" + "_".join(extra).replace("=", "-").replace("/", ""))
            lines.append(f"| `{' '.join(extra)}` | {refused(extra, run_dir)} |")
            print(lines[-1], flush=True)
    lines.append(f"\nNo-update NPO value (2/β)·log 2 at β = 0.5: {4 * math.log(2):.4f}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
