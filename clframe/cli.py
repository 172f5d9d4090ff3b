"""``clframe run | list | plot | compare``. Only ``run`` imports torch / lightning."""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
from pathlib import Path

from clframe.errors import ConfigError
from clframe.io import atomic_write_text, log_records_to

USAGE = """clframe — continual learning and unlearning as events of one stream

commands:
  clframe run [KEY=VALUE ...]        run an experiment (Hydra overrides; -m for a sweep)
      e.g. clframe run scenario=split_mnist strategy=ewc strategy.lam=1000 trainer.max_epochs=2 seed=1
           clframe run -m strategy=naive,replay,ewc,lwf
           clframe run resume=runs/<run dir>           continue a killed run (progress_bar=, plots= may change)
           clframe run run_dir=runs/a overwrite=true   replace the results in a non-empty run_dir
           clframe run --cfg job                       print the composed config
  clframe list [PATTERN]             registered strategies, scenarios, backbones, metrics, presets
  clframe plot RUN_DIR [RUN_DIR ...] [-o OUT] [--format png|pdf|svg]   redraw a run's plots; overlay runs
  clframe compare RUN_DIR [...] [-o OUT.md|.csv|.tex] [--per-run]   headline metrics, mean ± std over seeds
  clframe report RUN_DIR [...] [-o report.md|report.html]   one self-contained report (plots embedded)

errors are one line (exit status 2: a configuration error, 1: a failure while running);
--debug or CLFRAME_DEBUG=1 shows the Python traceback
"""


def _run(argv: list[str]) -> int:
    """One run: composed and validated here (one-line errors), then :func:`clframe.runner.run`. Hydra's own
    command line handles sweeps (``-m``) and its flags (``--cfg job``, ``--help``...)."""
    if any(a.startswith("-") for a in argv):
        return _run_hydra(argv)
    from clframe.config import compose
    from clframe.report import print_summary
    from clframe.runner import check_resume_overrides, run

    cfg = compose(argv)
    if cfg.get("resume"):
        check_resume_overrides(argv)
    with log_records_to(logging.StreamHandler(sys.stdout), "%(message)s"):  # as Hydra's job logging would
        print_summary(run(cfg))
    return 0


def _run_hydra(argv: list[str]) -> int:
    """``clframe run -m ...`` and Hydra's flags: every job of a sweep runs even if one fails; each failure is
    one line, and the exit status is the worst one."""
    import hydra
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import DictConfig

    from clframe.config import config_dir

    if "launcher=slurm" in argv and shutil.which("srun") is None:  # submitit would fail with a traceback
        raise ConfigError(
            "launcher", "slurm", hint="SLURM's srun is not on PATH here (not a SLURM cluster); launcher=local runs "
            "the same jobs through submitit's local executor on this machine"
        )  # fmt: skip
    worst = 0

    @hydra.main(config_path=str(config_dir()), config_name="config", version_base="1.3")
    def main(cfg: DictConfig) -> float | None:
        """One job: its ``objective`` value for the sweeper (``None`` without one; a failed job: the worst value,
        see :func:`_failed_value`)."""
        nonlocal worst
        from clframe.report import print_summary
        from clframe.runner import check_resume_overrides, run
        from clframe.sweeps import objective_value

        hc = HydraConfig.get()
        if hc.mode == RunMode.MULTIRUN and not cfg.get("run_dir") and not cfg.get("resume"):
            cfg.run_dir = hc.runtime.output_dir
        try:
            if cfg.get("resume"):
                check_resume_overrides(list(hc.overrides.task))
            result = run(cfg)
            print_summary(result)
            return objective_value(result, cfg.get("objective"))
        except Exception as err:
            if _debug():
                raise
            code, message = _describe(err)
            print(f"error: {message}", file=sys.stderr)
            worst = max(worst, code)
            return _failed_value(hc)

    sys.argv = ["clframe run", *argv]
    main()
    return worst


def _failed_value(hc) -> float:
    """What a failed job returns to the sweeper: the worst value of its direction (-inf when maximising,
    +inf when minimising: Optuna records the trial and the search goes on; it refuses NaN), NaN otherwise."""
    direction = str(getattr(hc.sweeper, "direction", "") or "").lower() if "sweeper" in hc else ""
    return {"maximize": float("-inf"), "minimize": float("inf")}.get(direction, float("nan"))


def _debug() -> bool:
    return os.environ.get("CLFRAME_DEBUG", "") not in ("", "0")


def _describe(err: BaseException) -> tuple[int, str]:
    """(exit status, one-line message): 2 for a configuration error, 1 for a failure while running."""
    if isinstance(err, ConfigError):
        return 2, " ".join(str(err).split())
    module = type(err).__module__.split(".")[0]
    if module in ("hydra", "omegaconf"):
        options = getattr(err, "options", None)
        missing = getattr(err, "missing_cfg_file", None)
        if options and missing and "/" in missing:
            key, value = missing.rsplit("/", 1)
            return 2, f"{key}={value!r} is invalid; valid choices: {', '.join(options)}"
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        return 2, " ".join(lines[:2]) if lines else type(err).__name__
    text = " ".join(str(err).split()) or type(err).__name__
    hint = " (CLFRAME_DEBUG=1 or --debug shows the traceback)"
    if type(err).__module__.startswith("clframe") or isinstance(err, (FileNotFoundError, PermissionError)):
        return 1, text  # clframe's own errors and missing files say what to do; no type name, no hint
    return 1, f"{type(err).__name__}: {text}{hint}"


LIST_USAGE = {  # where each registered name goes in a config
    "strategy": "strategy.name=NAME; a strategy= file below sets it with its values",
    "scenario": "scenario.name=NAME; a scenario= file below sets it with its values",
    "backbone": "backbone.name=NAME; a backbone= file below sets it with its values",
    "metric": "reported in metrics.json as cl/NAME; objective=cl/NAME for sweeps",
    "evaluator": "evaluators=[{name: NAME}]",
    "unlearner": "unlearning=NAME",
    "summary": "summaries=[NAME]",
}


def _list(argv: list[str]) -> int:
    from clframe.config import config_dir
    from clframe.registry import scan_registrations

    if argv and argv[0] in ("-h", "--help"):
        print("usage: clframe list [PATTERN]   registered parts and config files whose name matches PATTERN (glob)")
        return 0
    import fnmatch
    import re
    import textwrap

    pattern = argv[0] if argv else "*"
    width = max(60, min(shutil.get_terminal_size((100, 24)).columns, 120))
    for kind, items in scan_registrations(pattern).items():
        if not items:
            continue
        print(f"{kind}  ({LIST_USAGE[kind]}):")
        for name, doc in items:
            name = f"cl/{name}" if kind == "metric" else name
            doc = re.sub(r":\w+:`([^`<]+?)\s*(<[^>]*>)?`", r"`\1`", doc.replace("``", "`"))  # reST roles: plain
            head = f"  {name:<20} "
            print(textwrap.fill(doc, width, initial_indent=head, subsequent_indent=" " * len(head)) if doc else head)

    root = config_dir()
    groups = ("scenario", "strategy", "backbone", "unlearning", "pretrain", "logger", "trainer", "experiment",
              "hparams_search", "launcher")  # fmt: skip
    for group in groups:
        files = sorted(p.stem for p in (root / group).glob("*.yaml"))
        files = [f for f in files if fnmatch.fnmatch(f, pattern)]
        if files:
            print(textwrap.fill(", ".join(files), width, initial_indent=f"config {group}=  ", subsequent_indent="    "))
    return 0


def _plot(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="clframe plot", description="redraw plots of runs; overlay several runs")
    parser.add_argument("runs", nargs="+", help="run directories (holding metrics.json)")
    parser.add_argument("-o", "--out", default=None, help="output folder for the overlay (default: first run's plots/)")
    parser.add_argument("--format", choices=["png", "pdf", "svg"], default="png", help="pdf / svg: vector output")
    args = parser.parse_args(argv)
    from clframe.plots import plot_comparison, plot_run

    if len(args.runs) == 1 and args.out is None:
        for path in plot_run(args.runs[0], fmt=args.format):
            print(path)
    else:
        for path in plot_comparison(args.runs, args.out, fmt=args.format):
            print(path)
    return 0


def _compare(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="clframe compare", description="a table of the runs' headline metrics")
    parser.add_argument("runs", nargs="+", help="run directories, or folders of runs (a sweep's output)")
    parser.add_argument("-f", "--format", choices=["md", "csv", "latex"], default=None, help="default: md, or by -o")
    parser.add_argument("-o", "--out", default=None, help="write the table here (.md, .csv or .tex) instead of stdout")
    parser.add_argument(
        "--per-run", action="store_true", help="one row per run (default: seeds of one config in one row, mean ± std)"
    )
    args = parser.parse_args(argv)
    from clframe.report import compare_table

    suffix = {".csv": "csv", ".tex": "latex"}.get(Path(args.out).suffix, "md") if args.out else "md"
    table = compare_table(args.runs, args.format or suffix, per_run=args.per_run)
    if args.out:
        atomic_write_text(Path(args.out), table if table.endswith("\n") else table + "\n")
        print(args.out)
    else:
        print(table)
    return 0


def _report(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="clframe report", description="one self-contained Markdown / HTML report")
    parser.add_argument("runs", nargs="+", help="run directories, or folders of runs (a sweep's output)")
    parser.add_argument("-o", "--out", default="report.md", help="report.md (Markdown) or report.html")
    args = parser.parse_args(argv)
    from clframe.document import write_report

    print(write_report(args.runs, args.out))
    return 0


def _worker(argv: list[str]) -> int:
    """``python -m clframe _worker CONFIG``: one rank > 0 of a multi-process run, started by
    :func:`clframe.distributed.processes` on rank 0's final config (a YAML file it wrote; read as data)."""
    from omegaconf import OmegaConf

    from clframe.runner import run

    run(OmegaConf.load(argv[0]))
    import torch.distributed as dist  # leave the group, then exit without C++ teardown (gloo threads can abort)

    if dist.is_initialized():
        dist.destroy_process_group()
    sys.stdout.flush(), sys.stderr.flush()
    os._exit(0)


COMMANDS = {"run": _run, "list": _list, "plot": _plot, "compare": _compare, "report": _report}
HIDDEN = {"_worker": _worker}


def main(argv: list[str] | None = None) -> int:
    """The command line: one-line errors (exit status 2: configuration, 1: runtime failure, 130: interrupted);
    ``--debug`` (anywhere) or ``CLFRAME_DEBUG=1`` shows the traceback instead."""
    argv = sys.argv[1:] if argv is None else argv
    if "--debug" in argv:
        argv = [a for a in argv if a != "--debug"]
        os.environ["CLFRAME_DEBUG"] = "1"
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd in HIDDEN:
        return HIDDEN[cmd](rest)
    if cmd not in COMMANDS:
        print(f"error: unknown command {cmd!r}; valid choices: {', '.join(COMMANDS)}\n\n{USAGE}", file=sys.stderr)
        return 2
    try:
        return COMMANDS[cmd](rest)
    except KeyboardInterrupt as err:
        why = "terminated (SIGTERM)" if str(err) == "SIGTERM" else "interrupted"
        print(f"error: {why} (finished events are kept; resume= continues the run)", file=sys.stderr)
        return 143 if str(err) == "SIGTERM" else 130
    except Exception as err:
        if _debug():
            raise
        code, message = _describe(err)
        print(f"error: {message}", file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
