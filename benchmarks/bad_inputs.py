"""Replay a table of bad inputs through ``clframe run`` and report, per input, the exit status, the message
and whether anything was written.

    OMP_NUM_THREADS=1 python benchmarks/bad_inputs.py            # -> benchmarks/results/bad_inputs.md

Each input runs in-process (``clframe.cli.main``) in a fresh working folder; "written" compares every file
under that folder (and the run directory named by the input) before and after. Expected: configuration
errors exit 2, failures while running exit 1, every message is one line, and a refused input writes nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import yaml

FAST = ["scenario=split_blobs", "backbone.hidden=[8]", "trainer.max_epochs=1", "logger=none", "progress_bar=none"]
PARTIAL = "partial"  # placeholder: a copy of a run killed after two experiences

# (label, argv after `run`, environment changes, prepare(run folder) or None, expected exit status)
CASES: list[tuple[str, list[str], dict[str, str], str | None, int]] = [
    ("negative clipping", ["trainer.gradient_clip_val=-1"], {}, None, 2),
    ("negative replay batch", ["strategy=replay", "strategy.replay_batch_size=-3"], {}, None, 2),
    ("zero online-memory batch", ["strategy=er", "strategy.minibatch_size=0"], {}, None, 2),
    ("no training batches", ["trainer.limit_train_batches=0"], {}, None, 2),
    ("zero epochs", ["trainer.max_epochs=0"], {}, None, 2),
    ("epochs -1 without max_steps", ["trainer.max_epochs=-1"], {}, None, 2),
    ("zero max_steps", ["trainer.max_steps=0"], {}, None, 2),
    ("zero accumulation", ["trainer.accumulate_grad_batches=0"], {}, None, 2),
    ("lr nan", ["strategy.lr=nan"], {}, None, 2),
    ("lr inf", ["strategy.lr=inf"], {}, None, 2),
    ("lr negative", ["strategy.lr=-0.1"], {}, None, 2),
    ("lr a word", ["strategy.lr=abc"], {}, None, 2),
    ("momentum 2", ["strategy.momentum=2"], {}, None, 2),
    ("batch size 0", ["strategy.batch_size=0"], {}, None, 2),
    ("unknown optimiser", ["strategy.optimizer=adagrad"], {}, None, 2),
    ("EWC lambda a word", ["strategy=ewc", "strategy.lam=abc"], {}, None, 2),
    ("buffer size 0", ["strategy.buffer_size=0"], {}, None, 2),
    ("unknown buffer policy", ["strategy.buffer_policy=fifo"], {}, None, 2),
    ("shuffle_classes=maybe", ["scenario.shuffle_classes=maybe"], {}, None, 2),
    ("seed a word", ["seed=abc"], {}, None, 2),
    ("plots a word", ["plots=sometimes"], {}, None, 2),
    ("unknown strategy", ["strategy=nope"], {}, None, 2),
    ("unknown scenario", ["scenario=nope"], {}, None, 2),
    ("unknown backbone", ["backbone=nope"], {}, None, 2),
    ("unknown preset", ["experiment=nope"], {}, None, 2),
    ("unknown strategy key", ["strategy.nope=1"], {}, None, 2),
    ("unknown strategy option (+)", ["+strategy.nope=1"], {}, None, 2),
    ("unknown trainer key (fabric)", ["+trainer.nope=1"], {}, None, 2),
    ("unknown engine", ["trainer.engine=jax"], {}, None, 2),
    ("precision 8", ["trainer.precision=8"], {}, None, 2),
    ("unknown accelerator", ["trainer.accelerator=quantum"], {}, None, 2),
    ("zero devices", ["trainer.devices=0"], {}, None, 2),
    ("two devices (fabric)", ["trainer.devices=2"], {}, None, 2),
    ("unknown progress bar", ["progress_bar=fancy"], {}, None, 2),
    ("unknown evaluator", ["+evaluators=[{name: nope}]"], {}, None, 2),
    ("evaluator without a name", ["+evaluators=[3]"], {}, None, 2),
    ("pretrain file missing", ["pretrain=load", "pretrain.path=/nonexistent/backbone.pt"], {}, None, 2),
    ("pretrain lr negative", ["pretrain=digits", "pretrain.lr=-1"], {}, None, 2),
    ("forget requests, no unlearning", ["scenario=unlearning_digits", "strategy=naive"], {}, None, 2),
    ("unknown unlearning method", ["unlearning=nope"], {}, None, 2),
    ("unlearning for a gradient-free method", ["scenario=unlearning_digits", "strategy=nmc", "unlearning=ga"], {},
     None, 2),
    ("missing plugin module", ["plugins=[no_such_module_xyz]"], {}, None, 2),
    ("unknown logger", ["logger=nope"], {}, None, 2),
    ("logger option the class rejects", ["+logger.no_such_option=1", "logger=csv"], {}, None, 2),
    ("run_dir holds another run", ["run_dir=taken"], {}, "taken", 2),
    ("resume a missing folder", ["resume=/nonexistent/run"], {}, None, 2),
    ("resume a folder that is no run", ["resume=empty"], {}, "empty", 2),
    ("resume with a result-changing override", ["resume=partial", "strategy.lr=0.5"], {}, PARTIAL, 2),
    ("resume: logger payload in config.yaml", ["resume=partial"], {}, "partial:payload", 2),
    ("resume: config.yaml is garbage", ["resume=partial"], {}, "partial:garbage", 2),
    ("resume: truncated last.pt", ["resume=partial"], {}, "partial:truncated", 1),
    ("resume: last.pt of something else", ["resume=partial"], {}, "partial:foreign", 1),
    ("MNIST missing", ["scenario=split_mnist"], {"CLFRAME_DATA_ROOT": "/nonexistent"}, None, 1),
    ("CIFAR-10 missing", ["scenario=seq_cifar10"], {"CLFRAME_DATA_ROOT": "/nonexistent"}, None, 1),
    ("diverging lr (non-finite loss)", ["scenario=split_digits", "strategy=naive", "strategy.lr=1e30"], {}, None,
     1),
]  # fmt: skip


def _partial_run(root: Path) -> Path:
    """A run killed (KeyboardInterrupt) before its third experience: what the resume cases start from."""
    from clframe.config import compose
    from clframe.runner import run
    from clframe.strategies.naive import Naive

    original = Naive.before_experience

    def crash(self, exp):
        if exp.id == 2:
            raise KeyboardInterrupt
        original(self, exp)

    Naive.before_experience = crash
    try:
        run(compose([*FAST, "strategy=naive", f"run_dir={root / 'partial'}", "plots=false"]))
    except KeyboardInterrupt:
        pass
    finally:
        Naive.before_experience = original
    return root / "partial"


def _prepare(kind: str | None, cwd: Path, partial: Path) -> None:
    if kind is None:
        return
    name, _, damage = kind.partition(":")
    if name in ("taken", "empty"):
        (cwd / name).mkdir()
        if name == "taken":
            (cwd / name / "metrics.json").write_text("{}")
        return
    run_dir = cwd / "partial"
    shutil.copytree(partial, run_dir)
    if damage == "payload":
        saved = yaml.safe_load((run_dir / "config.yaml").read_text())
        saved["logger"] = {"_target_": "torch.load", "f": "x.pt", "weights_only": False}
        (run_dir / "config.yaml").write_text(yaml.safe_dump(saved))
    elif damage == "garbage":
        (run_dir / "config.yaml").write_text("{{{ not: yaml: [")
    elif damage == "truncated":
        ckpt = run_dir / "checkpoints/last.pt"
        ckpt.write_bytes(ckpt.read_bytes()[:200])
    elif damage == "foreign":
        import torch

        torch.save({"state_dict": {}}, run_dir / "checkpoints/last.pt")


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def replay(cases=CASES) -> list[dict]:
    from clframe.cli import main

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        partial = _partial_run(root / "source")
        for i, (label, argv, env, prep, expected) in enumerate(cases):
            cwd = root / f"case{i}"
            cwd.mkdir()
            _prepare(prep, cwd, partial)
            before = _files(cwd)
            old_env = {k: os.environ.get(k) for k in env}
            os.environ.update(env)
            here = os.getcwd()
            os.chdir(cwd)
            err, out = io.StringIO(), io.StringIO()
            t0 = time.perf_counter()
            try:
                with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
                    args = argv if any(a.startswith("resume=") for a in argv) else [*FAST, *argv]
                    code = main(["run", *args])
            except SystemExit as exit_:
                code = exit_.code
            finally:
                os.chdir(here)
                for k, v in old_env.items():
                    os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
            lines = [line for line in err.getvalue().splitlines() if line.strip() and "Warning" not in line]
            after = _files(cwd)
            written = sorted(k for k in after if before.get(k) != after[k])
            rows.append(
                {
                    "label": label,
                    "argv": " ".join(argv),
                    "code": code,
                    "expected": expected,
                    "message": lines[-1] if lines else "",
                    "one_line": len(lines) == 1 and lines[0].startswith("error: "),
                    "traceback": "Traceback" in err.getvalue(),
                    "written": written,
                    "seconds": time.perf_counter() - t0,
                }
            )
    return rows


def table(rows: list[dict]) -> str:
    ok_code = sum(r["code"] == r["expected"] for r in rows)
    one = sum(r["one_line"] for r in rows)
    tb = sum(r["traceback"] for r in rows)
    config = [r for r in rows if r["expected"] == 2]
    clean = sum(not r["written"] for r in config)
    out = [
        f"{len(rows)} bad inputs: {ok_code} with the expected exit status, {one} with a one-line `error:` message,"
        f" {tb} with a traceback; {clean} of {len(config)} refused configuration inputs wrote nothing.",
        "",
        "| input | overrides | exit (expected) | one line | written | message |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        msg = r["message"].replace("|", "\\|")
        msg = msg if len(msg) <= 160 else msg[:157] + "..."
        written = ", ".join(r["written"][:3]) + (" ..." if len(r["written"]) > 3 else "") if r["written"] else "no"
        out.append(
            f"| {r['label']} | `{r['argv']}` | {r['code']} ({r['expected']}) | {'yes' if r['one_line'] else 'NO'}"
            f" | {written} | {msg} |"
        )
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/bad_inputs.md")
    args = parser.parse_args(argv)
    rows = replay()
    text = "# Bad inputs replayed through `clframe run`\n\n`OMP_NUM_THREADS=1 python benchmarks/bad_inputs.py`\n\n"
    text += table(rows)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)
    return 0 if all(r["code"] == r["expected"] and r["one_line"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
