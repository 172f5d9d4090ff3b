"""``clframe run | list | plot | compare``. Only ``run`` imports torch / lightning."""

from __future__ import annotations

import argparse
import sys

USAGE = """clframe — continual learning and unlearning as events of one stream

commands:
  clframe run [KEY=VALUE ...]        run an experiment (Hydra overrides; -m for a sweep)
      e.g. clframe run scenario=split_mnist strategy=ewc strategy.lam=1000 trainer.max_epochs=2 seed=1
           clframe run -m strategy=naive,replay,ewc,lwf
           clframe run resume=runs/<run dir>           continue a killed run
           clframe run --cfg job                       print the composed config
  clframe list [PATTERN]             registered strategies, scenarios, backbones, metrics, presets
  clframe plot RUN_DIR [RUN_DIR ...] [-o OUT]   redraw a run's plots; overlay several runs
  clframe compare RUN_DIR [...]      Markdown table of headline metrics
"""


def _run(argv: list[str]) -> int:
    import hydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import DictConfig

    from clframe.config import config_dir

    @hydra.main(config_path=str(config_dir()), config_name="config", version_base="1.3")
    def main(cfg: DictConfig) -> None:
        from clframe.report import print_summary
        from clframe.runner import run

        if not cfg.get("run_dir") and not cfg.get("resume"):
            cfg.run_dir = HydraConfig.get().runtime.output_dir
        print_summary(run(cfg))

    sys.argv = ["clframe run", *argv]
    main()
    return 0


def _list(argv: list[str]) -> int:
    from clframe.config import config_dir
    from clframe.registry import scan_registrations

    pattern = argv[0] if argv else "*"
    for kind, items in scan_registrations(pattern).items():
        if not items:
            continue
        print(f"{kind}:")
        for name, doc in items:
            print(f"  {name:<20} {doc}")
    root = config_dir()
    for group in ("scenario", "strategy", "backbone", "experiment"):
        files = sorted(p.stem for p in (root / group).glob("*.yaml"))
        import fnmatch

        files = [f for f in files if fnmatch.fnmatch(f, pattern)]
        if files:
            print(f"config {group}=  " + ", ".join(files))
    return 0


def _plot(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="clframe plot", description="redraw plots of runs; overlay several runs")
    parser.add_argument("runs", nargs="+", help="run directories (holding metrics.json)")
    parser.add_argument("-o", "--out", default=None, help="output folder for the overlay (default: first run's plots/)")
    args = parser.parse_args(argv)
    from clframe.plots import plot_comparison, plot_run

    if len(args.runs) == 1 and args.out is None:
        for path in plot_run(args.runs[0]):
            print(path)
    else:
        for path in plot_comparison(args.runs, args.out):
            print(path)
    return 0


def _compare(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="clframe compare", description="Markdown table of headline metrics")
    parser.add_argument("runs", nargs="+")
    args = parser.parse_args(argv)
    from clframe.report import compare_table

    print(compare_table(args.runs))
    return 0


COMMANDS = {"run": _run, "list": _list, "plot": _plot, "compare": _compare}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd not in COMMANDS:
        print(f"unknown command {cmd!r}; valid choices: {', '.join(COMMANDS)}\n\n{USAGE}", file=sys.stderr)
        return 2
    return COMMANDS[cmd](rest)


if __name__ == "__main__":
    sys.exit(main())
