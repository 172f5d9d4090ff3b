"""A run directory is untrusted input: resuming instantiates only allow-listed logger classes with plain
values, and ``resume=`` is authoritative (a moved or copied run continues where it is now)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from clframe.errors import ConfigError
from clframe.runner import SAFE_LOGGERS, make_logger, run
from clframe.strategies.naive import Naive
from tests.conftest import BLOBS, crash_at

SMALL = (*BLOBS, "strategy=naive", "backbone.hidden=[8]", "trainer.max_epochs=1", "logger=csv")


def _partial_run(make_cfg, monkeypatch) -> Path:
    cfg = make_cfg(*SMALL)
    crash_at(monkeypatch, Naive, 2, cfg)
    return Path(cfg.run_dir)


def _edit_logger(run_dir: Path, logger) -> None:
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    saved["logger"] = logger
    (run_dir / "config.yaml").write_text(yaml.safe_dump(saved))


@pytest.mark.parametrize("where", ["nested", "top"])
def test_resume_refuses_a_logger_node_that_could_run_code(make_cfg, monkeypatch, tmp_path, where):
    run_dir = _partial_run(make_cfg, monkeypatch)
    marker = tmp_path / "pwned"
    payload = {"_target_": "clframe.io.atomic_write_text", "path": str(marker), "text": "ran"}
    logger = {"_target_": SAFE_LOGGERS[0], "name": payload} if where == "nested" else payload
    _edit_logger(run_dir, logger)
    before = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    with pytest.raises(
        ConfigError, match=r"^logger=.* is invalid; valid choices: lightning\.pytorch\.loggers\.CSVLogger"
    ):
        run(make_cfg(f"resume={run_dir}"))
    assert not marker.exists()
    assert {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()} == before  # nothing rewritten


def test_a_fresh_run_instantiates_the_logger_non_recursively(make_cfg, tmp_path):
    """Even in a user's own logger node a nested ``_target_`` stays a value: it is never called."""
    marker = tmp_path / "called"
    cfg = make_cfg(*SMALL)
    cfg.logger.name = {"_target_": "clframe.io.atomic_write_text", "path": str(marker), "text": "ran"}
    try:
        make_logger(cfg, tmp_path / "logs")
    except Exception:  # noqa: BLE001  (the logger may reject a dict name; what matters is that nothing ran)
        pass
    assert not marker.exists()


def test_resume_continues_a_copied_run_where_it_is_now(make_cfg, monkeypatch, tmp_path):
    original = _partial_run(make_cfg, monkeypatch)
    files = {p: p.read_bytes() for p in original.rglob("*") if p.is_file()}
    copy = tmp_path / "copied_run"
    shutil.copytree(original, copy)
    result = run(make_cfg(f"resume={copy}"))
    assert result["status"] == "complete" and Path(result["run_dir"]) == copy
    assert json.loads((copy / "metrics.json").read_text())["status"] == "complete"
    assert {p: p.read_bytes() for p in original.rglob("*") if p.is_file()} == files  # the original is untouched
    assert json.loads((original / "metrics.json").read_text())["status"] != "complete"


def test_a_second_run_into_a_locked_run_directory_fails_at_once(make_cfg):
    """Two runs into one directory used to both exit 0 with interleaved events; now the second is refused
    (the lock is the holder's open file: it disappears with the process, so a killed run leaves none)."""
    import fcntl

    cfg = make_cfg(*SMALL)
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True)
    with open(run_dir / ".clframe.lock", "a+") as holder:  # another process running there
        fcntl.flock(holder.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(ConfigError, match=r"^run_dir=.* is invalid\. another clframe process is running"):
            run(cfg)
        assert not (run_dir / "metrics.json").exists() and not (run_dir / "events.jsonl").exists()
    assert run(cfg)["status"] == "complete"  # released: the directory is usable again


def test_atomic_writes_respect_the_umask(tmp_path):
    """Results written atomically get the mode a plain open() would give them (mkstemp alone gives 0600)."""
    import os

    from clframe.io import atomic_write_text

    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
        (tmp_path / "b.txt").write_text("x")
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == (tmp_path / "b.txt").stat().st_mode & 0o777 == 0o644


def test_a_killed_runs_half_written_files_are_removed_on_resume(make_cfg, monkeypatch):
    run_dir = _partial_run(make_cfg, monkeypatch)
    strays = [run_dir / "checkpoints" / ".last.pt.k1ll3d.tmp", run_dir / ".metrics.json.x9.tmp"]
    for p in strays:
        p.write_bytes(b"half a file")
    keep = run_dir / "notes.tmp"  # not one of clframe's temporary names: left alone
    keep.write_text("mine")
    assert run(make_cfg(f"resume={run_dir}"))["status"] == "complete"
    assert not any(p.exists() for p in strays) and keep.read_text() == "mine"
