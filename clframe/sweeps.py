"""Sweeps that optimise: the objective a run returns to Hydra's sweeper, and one summary table per sweep.

``objective: cl/avg_acc`` (any key of ``metrics.json["metrics"]``) makes ``clframe run -m`` return that
value from every job, so Hydra's Optuna sweeper (``hydra/sweeper=optuna``, presets in
``experiments/hparams_search/``) can optimise it. :class:`SweepSummary` (a Hydra callback, on in
``experiments/config.yaml``) appends one line per finished job to ``<sweep dir>/sweep.jsonl`` (the job's
overrides, objective, seed, status, run directory; one ``O_APPEND`` write per job, so parallel jobs of a
launcher on a shared file system do not interleave) and at the end of the sweep writes
``summary.md`` / ``summary.csv`` from it, best objective first.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from pathlib import Path
from typing import Any

from clframe.errors import ConfigError
from clframe.io import atomic_write_text
from clframe.report import markdown_table


def objective_value(result: dict[str, Any], key: str | None) -> float | None:
    """``result["metrics"][key]`` as a float (``None`` without an objective); a key the run did not report
    is a :class:`ConfigError` listing the ones it did."""
    if not key:
        return None
    metrics = result.get("metrics") or {}
    if key not in metrics:
        raise ConfigError("objective", key, sorted(metrics), hint="a key of metrics.json['metrics'] of this run")
    value = metrics[key]
    return float("nan") if value is None else float(value)


def summary_rows(lines: list[dict[str, Any]], direction: str = "maximize") -> tuple[list[str], list[list[str]]]:
    """Header and rows of the sweep table (best objective first; failed jobs last)."""
    sign = -1.0 if direction == "maximize" else 1.0

    def order(line: dict[str, Any]) -> tuple[int, float]:
        value = line.get("objective")
        ok = isinstance(value, (int, float)) and math.isfinite(value)
        return (0, sign * value) if ok else (1, 0.0)

    header = ["job", "overrides", "seed", "status", "objective", "run"]
    rows = []
    for line in sorted(lines, key=order):
        value = line.get("objective")
        text = f"{value:.4f}" if isinstance(value, (int, float)) and math.isfinite(value) else "–"
        rows.append(
            [str(line.get("job", "")), " ".join(line.get("overrides", [])), str(line.get("seed", "")),
             str(line.get("status", "")), text, str(line.get("run_dir", ""))]
        )  # fmt: skip
    return header, rows


def write_summary(sweep_dir: Path, objective: str | None, direction: str = "maximize") -> Path | None:
    """``summary.md`` and ``summary.csv`` of ``sweep_dir/sweep.jsonl`` (``None`` if no job finished)."""
    log = Path(sweep_dir) / "sweep.jsonl"
    if not log.is_file():
        return None
    lines = [json.loads(x) for x in log.read_text().splitlines() if x.strip()]
    header, rows = summary_rows(lines, direction)
    title = f"# Sweep {Path(sweep_dir).name}: {len(rows)} jobs, objective {objective or '(none)'} ({direction})\n\n"
    atomic_write_text(Path(sweep_dir) / "summary.md", title + markdown_table(header, rows) + "\n")
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(header)
    writer.writerows([[v.replace("–", "") for v in r] for r in rows])
    atomic_write_text(Path(sweep_dir) / "summary.csv", buf.getvalue())
    return Path(sweep_dir) / "summary.md"


def append_job(sweep_dir: Path, line: dict[str, Any]) -> None:
    """One JSON line, written with a single ``O_APPEND`` write."""
    Path(sweep_dir).mkdir(parents=True, exist_ok=True)
    data = (json.dumps(line, default=str) + "\n").encode()
    fd = os.open(Path(sweep_dir) / "sweep.jsonl", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


try:  # the callback base class comes with hydra-core (a dependency); kept importable without it for docs
    from hydra.experimental.callback import Callback
except ImportError:  # pragma: no cover
    Callback = object  # type: ignore[assignment,misc]


class SweepSummary(Callback):
    """Hydra callback: a line per finished job, one table per sweep (see the module docstring)."""

    def on_job_end(self, config, job_return, **kwargs) -> None:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hc = HydraConfig.get()
        if hc.mode != RunMode.MULTIRUN:
            return
        # the job function returns the objective (None without one); a non-finite value marks a failed job
        value = job_return.return_value if job_return.status.name == "COMPLETED" else float("nan")
        failed = isinstance(value, float) and not math.isfinite(value)
        append_job(
            Path(config.hydra.sweep.dir),
            {
                "job": hc.job.num,
                "overrides": list(hc.overrides.task),
                "seed": config.get("seed"),
                "status": "failed" if failed else "complete",
                "objective": None if failed else value,
                "run_dir": config.get("run_dir") or hc.runtime.output_dir,
            },
        )

    def on_multirun_end(self, config, **kwargs) -> None:
        direction = str(config.hydra.sweeper.get("direction", "maximize")) if "sweeper" in config.hydra else "maximize"
        path = write_summary(Path(config.hydra.sweep.dir), config.get("objective"), direction.lower())
        if path is not None:
            print(f"sweep summary: {path}")
