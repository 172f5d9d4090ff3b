"""Atomic file writes (write to a temporary name in the same folder, then rename) and the run-directory lock."""

from __future__ import annotations

import errno
import json
import logging
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from clframe import distributed
from clframe.errors import ConfigError

try:
    import fcntl
except ImportError:  # Windows: no advisory locks, runs are not locked
    fcntl = None

LOCK_FILE = ".clframe.lock"


@contextmanager
def log_records_to(handler: logging.Handler, fmt: str) -> Iterator[None]:
    """Send clframe's log records (at least INFO) to ``handler`` for the duration of the block."""
    log = logging.getLogger("clframe")
    handler.setFormatter(logging.Formatter(fmt))
    log.addHandler(handler)
    level = log.level
    if log.getEffectiveLevel() > logging.INFO:
        log.setLevel(logging.INFO)
    try:
        yield
    finally:
        log.removeHandler(handler)
        log.setLevel(level)
        handler.close()


def _atomic(path: Path, write) -> None:
    """Write ``path`` whole or not at all (a temporary file, fsync, rename). Several processes of one run
    (:mod:`clframe.distributed`): only rank 0 writes."""
    if not distributed.is_main():
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # not mkstemp (always 0600): O_EXCL with mode 0666 gets the umask applied like any open(), without
    # toggling the process-wide umask
    tmp = str(path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as err:
        Path(tmp).unlink(missing_ok=True)
        if err.errno in (errno.ENOSPC, errno.EDQUOT):  # disk full: say which file and that nothing was lost
            raise OSError(
                err.errno, f"{err.strerror} while writing {path}; the previous version is intact: free space, resume"
            ) from None
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    _atomic(path, lambda fh: fh.write(text.encode()))


def write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, default=float) + "\n")


def atomic_torch_save(obj: Any, path: Path) -> None:
    import torch  # here, not at the top: report / plot read run directories without torch

    _atomic(path, lambda fh: torch.save(obj, fh))


@contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``run_dir`` (file ``.clframe.lock``) for the whole run: a second
    run or resume into the same directory fails at once instead of interleaving its files. The lock goes
    with the process (a killed run leaves no stale lock)."""
    if fcntl is None:
        yield
        return
    fh = open(Path(run_dir) / LOCK_FILE, "a+")  # noqa: SIM115  (held open for the whole run)
    try:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(
                "run_dir",
                str(run_dir),
                hint="another clframe process is running in this directory (it holds"
                f" {LOCK_FILE}); wait for it or choose another run_dir",
            ) from None
        yield
    finally:
        fh.close()


def is_locked(run_dir: Path) -> bool:
    """Whether a clframe process holds ``run_dir``'s lock now (a run whose ``metrics.json`` says ``running``
    but is not locked was killed: it reads as ``interrupted``)."""
    path = Path(run_dir) / LOCK_FILE
    if fcntl is None or not path.is_file():
        return False
    with open(path, "a+") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
        return False
