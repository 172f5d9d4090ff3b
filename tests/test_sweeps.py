"""Sweeps that optimise: a run returns its ``objective`` to Hydra's sweeper (Optuna through
``hparams_search=<name>``), every sweep writes one summary table, and failed jobs are recorded, not lost."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

from clframe.errors import ConfigError
from clframe.sweeps import objective_value, summary_rows

BLOBS = ["scenario=split_blobs", "backbone.hidden=[16]", "trainer.max_epochs=2", "strategy.batch_size=32"]
QUIET = ["logger=none", "progress_bar=none", "plots=false"]


def _sweep(tmp_path, *overrides):
    cmd = [sys.executable, "-m", "clframe", "run", "-m", *overrides, *BLOBS, *QUIET, f"hydra.sweep.dir={tmp_path}"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert (tmp_path / "sweep.jsonl").is_file(), res.stderr[-3000:]
    lines = [json.loads(x) for x in (tmp_path / "sweep.jsonl").read_text().splitlines()]
    return res, lines


def test_objective_value_and_its_errors():
    result = {"metrics": {"cl/avg_acc": 0.5, "cl/fwt": None}}
    assert objective_value(result, "cl/avg_acc") == 0.5 and objective_value(result, None) is None
    with pytest.raises(ConfigError, match="objective.*cl/avg_acc"):
        objective_value(result, "cl/avg_acc_typo")
    header, rows = summary_rows(
        [{"job": 0, "objective": 0.2}, {"job": 1, "objective": None, "status": "failed"}, {"job": 2, "objective": 0.9}]
    )
    assert [r[0] for r in rows] == ["2", "0", "1"]  # best first, failed last
    assert [
        r[0] for r in summary_rows([{"job": 0, "objective": 0.2}, {"job": 1, "objective": 0.1}], "minimize")[1]
    ] == [
        "1",
        "0",
    ]


def test_optuna_search_optimises_the_objective_and_writes_one_summary(tmp_path):
    res, lines = _sweep(tmp_path, "hparams_search=naive", "hydra.sweeper.n_trials=3")
    assert res.returncode == 0, res.stderr[-3000:]
    assert len(lines) == 3 and all(line["status"] == "complete" for line in lines)
    for line in lines:  # what the sweeper saw is what the run reported
        metrics = json.loads((tmp_path / line["run_dir"].split("/")[-1] / "metrics.json").read_text())["metrics"]
        assert line["objective"] == pytest.approx(metrics["cl/avg_acc"])
        assert any(o.startswith("strategy.lr=") for o in line["overrides"])
    best = yaml.safe_load((tmp_path / "optimization_results.yaml").read_text())
    assert best["best_value"] == pytest.approx(max(line["objective"] for line in lines))
    summary = (tmp_path / "summary.md").read_text()
    assert "objective cl/avg_acc (maximize)" in summary and summary.count("| complete |") == 3


def test_a_failed_job_is_recorded_and_the_sweep_goes_on(tmp_path):
    res, lines = _sweep(tmp_path, "objective=cl/avg_acc", "strategy=naive", "strategy.lr=0.05,-1")
    assert res.returncode == 2  # the worst job: a configuration error
    by_lr = {next(o for o in line["overrides"] if o.startswith("strategy.lr=")): line for line in lines}
    assert by_lr["strategy.lr=-1"]["status"] == "failed" and by_lr["strategy.lr=-1"]["objective"] is None
    assert by_lr["strategy.lr=0.05"]["status"] == "complete" and 0 <= by_lr["strategy.lr=0.05"]["objective"] <= 1
    assert (tmp_path / "summary.csv").read_text().count("\n") == 3  # header + 2 jobs


def test_objective_must_be_a_metric_key(make_cfg):
    from clframe.runner import build

    with pytest.raises(ConfigError, match="objective"):
        build(make_cfg(*BLOBS, "objective=5"))


def test_a_failed_optuna_trial_is_the_worst_value_and_the_search_goes_on(tmp_path):
    res, lines = _sweep(
        tmp_path,
        "hparams_search=naive",
        "hydra.sweeper.n_trials=6",
        "strategy.lr=choice(0.05,-1.0)",
    )
    statuses = {next(o for o in line["overrides"] if o.startswith("strategy.lr=")): line["status"] for line in lines}
    assert len(lines) == 6 and statuses == {"strategy.lr=0.05": "complete", "strategy.lr=-1.0": "failed"}, statuses
    best = yaml.safe_load((tmp_path / "optimization_results.yaml").read_text())
    assert best["best_params"] == {"strategy.lr": 0.05} and 0 <= best["best_value"] <= 1
    assert res.returncode == 2  # the worst job's status: a configuration error


def test_a_job_started_again_into_its_run_dir_resumes(make_cfg, monkeypatch):
    """auto_resume: a requeued job (same config, same run_dir) continues from its checkpoint to the same
    matrix as an uninterrupted run; a run directory of another config is refused."""
    from clframe.runner import run
    from clframe.strategies.naive import Naive
    from tests.conftest import crash_at

    cfg = make_cfg(*BLOBS, "strategy=naive", "auto_resume=true")
    crash_at(monkeypatch, Naive, 2, cfg)  # preempted before experience 2
    resumed = run(cfg.copy())  # the requeued job: the same config again
    assert (
        resumed["status"] == "complete"
        and resumed["accuracy_matrix"] == run(make_cfg(*BLOBS, "strategy=naive"))["accuracy_matrix"]
    )
    other = cfg.copy()
    other.seed = 1
    with pytest.raises(ConfigError, match="auto_resume"):
        run(other)


def test_the_local_submitit_launcher_runs_a_sweep(tmp_path):
    res, lines = _sweep(tmp_path, "launcher=local", "objective=cl/avg_acc", "strategy=naive", "seed=0,1")
    assert res.returncode == 0, res.stderr[-3000:]
    assert sorted(line["seed"] for line in lines) == [0, 1] and all(line["status"] == "complete" for line in lines)
    assert (tmp_path / ".submitit").is_dir() and (tmp_path / "summary.md").is_file()


def test_the_slurm_launcher_off_a_cluster_is_one_line_and_writes_nothing(tmp_path):
    """Where SLURM's ``srun`` is not on PATH, ``launcher=slurm`` is refused before Hydra makes a sweep folder."""
    cmd = [
        sys.executable,
        "-m",
        "clframe",
        "run",
        "-m",
        "launcher=slurm",
        "seed=0,1",
        f"hydra.sweep.dir={tmp_path / 's'}",
    ]
    env = {**os.environ, "PATH": os.path.dirname(sys.executable)}  # no srun
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert res.returncode == 2 and not (tmp_path / "s").exists() and not (tmp_path / "runs").exists()
    assert res.stderr.strip().splitlines() == [
        "error: launcher='slurm' is invalid. SLURM's srun is not on PATH here (not a SLURM cluster); launcher=local "
        "runs the same jobs through submitit's local executor on this machine"
    ]
