"""Run directories: validation before anything is written, one-line CLI errors, no fresh run over old results,
non-destructive failed resumes, events / CSV history that survive a kill, ``interrupted`` status."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import yaml

from clframe.cli import main
from clframe.config import compose
from clframe.errors import CheckpointError, ConfigError
from clframe.report import load_metrics
from clframe.runner import check_resume_overrides, run
from clframe.strategies.naive import Naive
from tests.conftest import BLOBS, crash_at

SMALL = (*BLOBS, "strategy=naive", "backbone.hidden=[8]", "trainer.max_epochs=1")

# (overrides, the key the one-line error must name) — each exits 0 silently without validation
BAD = [
    (["trainer.gradient_clip_val=-1"], "trainer.gradient_clip_val"),
    (["strategy=replay", "strategy.replay_batch_size=-3"], "strategy.replay_batch_size"),
    (["strategy=er", "strategy.minibatch_size=0"], "strategy.minibatch_size"),
    (["trainer.limit_train_batches=0"], "trainer.limit_train_batches"),
    (["trainer.max_epochs=0"], "trainer.max_epochs"),
    (["trainer.accumulate_grad_batches=0"], "trainer.accumulate_grad_batches"),
    (["strategy.lr=nan"], "strategy.lr"),
    (["strategy.lr=inf"], "strategy.lr"),
    (["strategy.momentum=1.5"], "strategy.momentum"),
    (["strategy=ewc", "strategy.lam=abc"], "strategy.lam"),
    (["scenario.shuffle_classes=maybe"], "scenario.shuffle_classes"),
    (["seed=abc"], "seed"),
    (["plots=sometimes"], "plots"),
    (["progress_bar=fancy"], "progress_bar"),
    (["trainer.precision=8"], "trainer.precision"),
    (["trainer.accelerator=quantum"], "trainer.accelerator"),
    (["trainer.devices=0"], "trainer.devices"),
    (["trainer.max_steps=0"], "trainer.max_steps"),
    (["+evaluators=[{name: nope}]"], "evaluator.name"),
    (["pretrain=load", "pretrain.path=/nonexistent/backbone.pt"], "pretrain.path"),
    (["pretrain=digits", "pretrain.lr=-1"], "pretrain.lr"),
    (["scenario=unlearning_digits", "strategy=naive"], "unlearning"),  # forget requests, no unlearning=
]


@pytest.mark.parametrize("overrides,key", BAD, ids=[" ".join(o) for o, _ in BAD])
def test_bad_values_are_refused_before_the_run_directory_exists(make_cfg, overrides, key):
    cfg = make_cfg(*SMALL, *overrides)
    with pytest.raises(ConfigError, match=f"^{re.escape(key)}="):
        run(cfg)
    assert not Path(cfg.run_dir).exists()


def test_unlearning_on_a_stream_without_forget_requests_warns(make_cfg):
    with pytest.warns(UserWarning, match="unlearning=ga has nothing to answer"):
        run(make_cfg(*SMALL, "unlearning=ga"))


def test_cli_prints_one_line_and_exit_status_2_for_a_config_error(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = main(["run", *SMALL, "trainer.gradient_clip_val=-1", "logger=none", "progress_bar=none"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err == [err[0]] and err[0].startswith("error: trainer.gradient_clip_val=-1 is invalid; expected")
    assert list(tmp_path.iterdir()) == []  # nothing written, not even a runs/ folder or a log


def test_cli_unknown_group_option_is_one_line_with_the_choices(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["run", "strategy=nope"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: strategy='nope' is invalid; valid choices: cl2r, clr")
    assert main(["run", "strategy.nope=1"]) == 2
    assert "Could not override 'strategy.nope'" in capsys.readouterr().err


def test_cli_runtime_failure_is_exit_1_and_debug_shows_the_traceback(make_cfg, monkeypatch, capsys):
    cfg = make_cfg(*SMALL)
    crash_at(monkeypatch, Naive, 1, cfg)
    ckpt = Path(cfg.run_dir) / "checkpoints/last.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:100])  # truncated
    assert main(["run", f"resume={cfg.run_dir}"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{ckpt} cannot be read" in err[0]
    with pytest.raises(CheckpointError, match="cannot be read"):
        main(["--debug", "run", f"resume={cfg.run_dir}"])
    os.environ.pop("CLFRAME_DEBUG", None)


def test_a_single_cli_run_writes_only_its_run_directory(tmp_path):
    """No ``./runs/<time>/cli.log`` from Hydra: the default run folder is the only thing created, and it
    holds the run's own log."""
    env = {**os.environ, "CLFRAME_DATA_ROOT": os.environ.get("CLFRAME_DATA_ROOT", "")}
    cmd = [sys.executable, "-m", "clframe", "run", *SMALL, "logger=none", "progress_bar=none", "plots=false"]
    subprocess.run(cmd, cwd=tmp_path, env=env, check=True, capture_output=True, timeout=300)
    runs = list((tmp_path / "runs").iterdir())
    assert [p.name for p in tmp_path.iterdir()] == ["runs"] and len(runs) == 1
    assert (runs[0] / "metrics.json").is_file() and "starting" in (runs[0] / "run.log").read_text("utf-8")


def test_a_fresh_run_into_a_non_empty_run_dir_is_refused_unless_overwrite(make_cfg, tmp_path):
    cfg = make_cfg(*SMALL)
    first = run(cfg)
    run_dir = Path(cfg.run_dir)
    (run_dir / "notes.txt").write_text("mine")
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    with pytest.raises(ConfigError, match=r"^run_dir=.* is invalid\. not empty .*resume=.*overwrite=true"):
        run(make_cfg(*SMALL, f"run_dir={run_dir}", "seed=1"))
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before
    second = run(make_cfg(*SMALL, f"run_dir={run_dir}", "seed=1", "overwrite=true"))
    assert second["seed"] == 1 and second["accuracy_matrix"] != first["accuracy_matrix"]
    assert (run_dir / "notes.txt").read_text() == "mine"  # overwrite removes clframe's outputs only
    assert len((run_dir / "events.jsonl").read_text().splitlines()) == len(second["row_events"])


def test_resume_refuses_overrides_it_would_ignore_and_honours_the_safe_ones(make_cfg, monkeypatch, capsys):
    cfg = make_cfg(*SMALL)
    crash_at(monkeypatch, Naive, 1, cfg)
    with pytest.raises(ConfigError, match=r"^resume='strategy\.lr=0\.5' is invalid.*with resume=: progress_bar"):
        check_resume_overrides([f"resume={cfg.run_dir}", "progress_bar=none", "strategy.lr=0.5"])
    assert main(["run", f"resume={cfg.run_dir}", "strategy.lr=0.5"]) == 2
    assert "refused: strategy.lr=0.5" in capsys.readouterr().err
    res = run(make_cfg(f"resume={cfg.run_dir}", "plots=true"))  # plots: a safe key, applied on resume
    assert res["status"] == "complete" and list((Path(cfg.run_dir) / "plots").glob("*.png"))


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_resume_keeps_the_csv_log_and_rebuilds_a_cut_event_log(make_cfg, monkeypatch):
    full = make_cfg(*SMALL, "logger=csv", "trainer.log_every_n_steps=1")
    run(full)
    cfg = make_cfg(*SMALL, "logger=csv", "trainer.log_every_n_steps=1")
    crash_at(monkeypatch, Naive, 3, cfg)
    run_dir = Path(cfg.run_dir)
    events = (run_dir / "events.jsonl").read_text().splitlines()
    (run_dir / "events.jsonl").write_text("\n".join(events[:-1]) + "\n")  # killed before the event was logged
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run(make_cfg(f"resume={run_dir}"))
    said = [str(w.message) for w in caught]
    assert not [m for m in said if "will be deleted" in m], said  # Lightning's warning is untrue here: rows are kept
    strip = lambda lines: [{k: v for k, v in json.loads(x).items() if k != "seconds"} for x in lines]  # noqa: E731
    want = (Path(full.run_dir) / "events.jsonl").read_text().splitlines()
    assert strip((run_dir / "events.jsonl").read_text().splitlines()) == strip(want)
    got, ref = _rows(run_dir / "logs/metrics.csv"), _rows(Path(full.run_dir) / "logs/metrics.csv")
    assert len(got) == len(ref) > len(events)  # the history before the kill is kept, nothing twice
    assert [r["step"] for r in got] == [r["step"] for r in ref]
    assert [r.get("exp_0/test/acc") for r in got] == [r.get("exp_0/test/acc") for r in ref]


def test_a_failed_resume_destroys_nothing(make_cfg, monkeypatch):
    cfg = make_cfg(*SMALL, "logger=csv")
    crash_at(monkeypatch, Naive, 2, cfg)
    run_dir = Path(cfg.run_dir)
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    saved["logger"]["no_such_option"] = 1  # a plain value the logger class rejects
    (run_dir / "config.yaml").write_text(yaml.safe_dump(saved))
    (run_dir / "checkpoints/last.pt").unlink()  # killed before the first checkpoint: the resume starts over
    files = lambda: {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file() and p.name != "run.log"}  # noqa: E731
    before = files()
    with pytest.raises(ConfigError, match=r"^logger='lightning.*CSVLogger' is invalid\. TypeError.*no_such_option"):
        run(make_cfg(f"resume={run_dir}"))
    assert files() == before


def test_a_killed_run_reads_as_interrupted(make_cfg, monkeypatch):
    cfg = make_cfg(*SMALL)
    crash_at(monkeypatch, Naive, 2, cfg)
    run_dir = Path(cfg.run_dir)
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "interrupted"
    m = json.loads((run_dir / "metrics.json").read_text())
    m["status"] = "running"  # what SIGKILL leaves behind: nobody wrote the final status
    (run_dir / "metrics.json").write_text(json.dumps(m))
    assert load_metrics(run_dir)["status"] == "interrupted"  # no process holds the run's lock


def test_a_truncated_checkpoint_names_the_file_and_the_fix(make_cfg, monkeypatch):
    cfg = make_cfg(*SMALL)
    crash_at(monkeypatch, Naive, 1, cfg)
    ckpt = Path(cfg.run_dir) / "checkpoints/last.pt"
    torch.save({"something": 1}, ckpt)
    with pytest.raises(CheckpointError, match=rf"{ckpt} is not a clframe checkpoint.*delete it"):
        run(make_cfg(f"resume={cfg.run_dir}"))


def test_an_unreadable_cached_oracle_is_removed_and_retrained(tmp_path, caplog):
    from clframe.unlearning.oracle import _load_cached

    path = tmp_path / "oracle_abc.pt"
    path.write_bytes(b"PK\x03\x04 truncated")
    assert _load_cached(path) is None and not path.exists()
    assert f"cached oracle {path} is unreadable" in caplog.text and "retraining it" in caplog.text


def test_a_truncated_pretrained_backbone_names_the_file(make_cfg, tmp_path):
    bad = tmp_path / "backbone.pt"
    bad.write_bytes(b"\x80\x02 not a checkpoint")
    cfg = make_cfg(*SMALL, "pretrain=load", f"pretrain.path={bad}")
    with pytest.raises(ConfigError, match=rf"^pretrain\.path='{re.escape(str(bad))}' is invalid\. unreadable"):
        run(cfg)


def test_disk_full_names_the_file_and_keeps_the_previous_version(tmp_path, monkeypatch):
    import errno

    from clframe.io import write_json

    target = tmp_path / "metrics.json"
    write_json(target, {"v": 1})
    real_fsync = os.fsync

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError, match=rf"No space left on device while writing {re.escape(str(target))}; the previous"):
        write_json(target, {"v": 2})
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert json.loads(target.read_text()) == {"v": 1} and [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_sigterm_marks_the_run_interrupted_and_resume_finishes_it(tmp_path):
    """A scheduler's SIGTERM (preemption, time limit) is handled like Ctrl-C: status ``interrupted``, exit
    143, finished events kept; ``resume=`` ends with the matrix of an uninterrupted run."""
    import signal
    import time

    args = ["scenario=split_digits", "strategy=naive", "logger=none", "progress_bar=none", "plots=false",
            "trainer.max_epochs=40"]  # fmt: skip
    env = {**os.environ, "CLFRAME_DATA_ROOT": os.environ.get("CLFRAME_DATA_ROOT", "")}
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "clframe", "run", *args, f"run_dir={killed}"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline, events = time.time() + 240, killed / "events.jsonl"
    while time.time() < deadline and not (events.is_file() and events.read_text().strip()):
        time.sleep(0.2)  # until the first event is finished
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143 and "terminated (SIGTERM)" in err
    m = json.loads((killed / "metrics.json").read_text())
    assert m["status"] == "interrupted" and m["error"] == "SIGTERM" and 1 <= len(m["row_events"]) < 5
    resumed = run(compose([f"resume={killed}"]))
    full = run(compose([*args, f"run_dir={tmp_path / 'full'}"]))
    assert resumed["status"] == "complete" and resumed["accuracy_matrix"] == full["accuracy_matrix"]


def test_auxiliary_loops_train_on_the_engine_device(make_cfg, monkeypatch):
    """Pretraining and the unlearner follow ``trainer.accelerator`` (the engine's device), not their own
    "CUDA if available" rule: with CUDA reported available but ``accelerator=cpu`` both run on the CPU."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    pre = run(make_cfg(*SMALL, "scenario=split_digits", "trainer.accelerator=cpu", "pretrain=digits",
                       "pretrain.epochs=1", "pretrain.allow_overlap=true"))  # fmt: skip
    assert pre["status"] == "complete" and pre["pretrain"]["source"] == "trained"
    unl = run(make_cfg(*SMALL, "scenario=unlearning_digits", "trainer.accelerator=cpu", "unlearning=ga",
                       "unlearning.steps=3"))  # fmt: skip
    assert unl["status"] == "complete" and unl["forget_requests"]
