"""Several processes for one run (``trainer.devices=N trainer.strategy=ddp``): who does what, and the checks.

The rule, per piece of a run (docs/architecture.md, "Distributed runs"):

- **Training an experience** is data-parallel: every rank draws the same global batch from the same seeded
  loader, trains on its contiguous shard of it (:func:`shard`), and DDP averages the gradients, so a step
  equals the single-process step on the global batch (exactly in arithmetic when the batch divides by the
  number of ranks; within float rounding of the reduction otherwise identical).
- **Sample stores stay identical on every rank.** Stores filled from a whole experience (``replay``,
  iCaRL's exemplars, ``joint``'s data, class statistics, Fisher information) follow a rank-consistent rule:
  every rank computes them from the same full data with the same seeded generator. Stores filled online
  from training batches (ER, DER++, ER-ACE's reservoir) are offered the *all-gathered* batch
  (:func:`gather`, in rank order = the single-process batch order) with its gathered extras (DER++'s logits).
  Forget requests are answered on every rank (same data, same seeded unlearner), so every rank purges.
  After every event the runner compares a digest of the weights and of each store across ranks
  (:func:`check_identical`) and stops the run, naming the store, if one differs.
- **Evaluation and writing happen once**, on rank 0 (:func:`main_only`: training inside it, e.g. an
  oracle's, runs on rank 0's device alone); the other ranks wait and receive rank 0's results
  (:func:`broadcast`). Every file write goes through :mod:`clframe.io`, which writes on rank 0 only.

Processes: ``clframe run trainer.devices=N`` starts ``N - 1`` workers on this machine (``python -m clframe
_worker CONFIG``, each with ``RANK`` / ``LOCAL_RANK`` / ``WORLD_SIZE`` / ``MASTER_*`` set; on the CPU each
takes ``cores / N`` threads); under ``torchrun`` or SLURM's ``srun`` (those variables already set) nothing is
started and Lightning's cluster environment reads them.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

WORKER_ENV = "CLFRAME_DDP_WORKER"  # set in the processes this module starts
LOCAL_ENV = "CLFRAME_DDP_LOCAL"  # set in every process of a group this module started (rank 0 included)
_local_only = False  # inside main_only(): rank 0 works alone, the others wait


def _group():
    """``torch.distributed`` when a process group exists, else ``None`` (without importing torch: clframe.io
    asks before every write, and ``report`` / ``plot`` read run directories without torch)."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.distributed.is_available() or not torch.distributed.is_initialized():
        return None
    return torch.distributed


def active() -> bool:
    """More than one process and a process group (and not inside :func:`main_only`)."""
    return not _local_only and _group() is not None and _group().get_world_size() > 1


def alone() -> bool:
    """Inside :func:`main_only` on rank 0 of a process group: train and evaluate as one process."""
    return _local_only


def world_size() -> int:
    return _group().get_world_size() if active() else 1


def rank() -> int:
    """This process's global rank (0 with one process; a worker knows its rank before the group exists)."""
    group = _group()
    if group is not None:
        return group.get_rank()
    return int(os.environ.get("RANK", 0)) if is_worker() else 0


def is_main() -> bool:
    """The process that evaluates and writes."""
    return rank() == 0


def is_worker() -> bool:
    """A process started by :func:`processes` for rank > 0 (its config is final: no resume lookup)."""
    return bool(os.environ.get(WORKER_ENV))


def barrier() -> None:
    if active():
        _group().barrier()


def broadcast(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (any picklable object; rank 0's own, unchanged)."""
    if not active():
        return obj
    box = [obj]
    _group().broadcast_object_list(box, src=0)
    return box[0]


def gather(t: torch.Tensor) -> torch.Tensor:
    """The concatenation over ranks, in rank order, of every rank's ``t`` (first dimensions may differ): the
    global batch again when ``t`` is a per-sample tensor of a :func:`shard`. ``t`` itself with one process."""
    if not active():
        return t
    import torch

    n = world_size()
    sizes = [torch.zeros(1, dtype=torch.long) for _ in range(n)]
    _group().all_gather(sizes, torch.tensor([len(t)]))
    longest = int(max(s.item() for s in sizes))
    host = t.detach().to("cpu")  # gloo gathers host tensors; stores live in host memory anyway
    host = host.to(torch.uint8) if host.dtype == torch.bool else host
    padded = torch.zeros((longest, *host.shape[1:]), dtype=host.dtype)
    padded[: len(host)] = host
    parts = [torch.empty_like(padded) for _ in range(n)]
    _group().all_gather(parts, padded)
    return torch.cat([p[: int(s.item())] for p, s in zip(parts, sizes)]).to(t.device, t.dtype)


def shard(batch: Any) -> Any:
    """This rank's contiguous part of every per-sample tensor of ``batch`` (dicts / lists nested), dim 0."""
    if not active():
        return batch
    import torch

    if isinstance(batch, torch.Tensor):
        return batch.tensor_split(world_size())[rank()] if batch.dim() else batch
    if isinstance(batch, dict):
        return {k: shard(v) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(shard(v) for v in batch)
    return batch


def leave() -> None:
    """Leave the process group (end of a run): no collective may follow."""
    group = _group()
    if group is not None:
        group.destroy_process_group()


def sync_buffers(module) -> None:
    """Rank 0's module buffers (BatchNorm running statistics, computed from each rank's shard) on every rank,
    as DDP itself broadcasts them before each forward pass: after training, the ranks' models are identical."""
    if active():
        import torch

        for buf in module.buffers():
            if buf.dtype == torch.bool:  # gloo has no bool: as bytes
                carrier = buf.data.to(torch.uint8)
                _group().broadcast(carrier, src=0)
                buf.data.copy_(carrier.bool())
            else:
                _group().broadcast(buf.data, src=0)


def mean(value: float) -> float:
    """The mean over ranks of a float (the logged training loss of the global batch)."""
    if not active():
        return value
    import torch

    t = torch.tensor([value], dtype=torch.float64)
    _group().all_reduce(t)
    return float(t.item()) / world_size()


@contextlib.contextmanager
def main_only() -> Iterator[bool]:
    """Rank 0 runs the block alone (``True``); the other ranks skip it (``False``) and wait at its end. Inside
    it, everything behaves as in one process (training uses rank 0's device only, :func:`active` is false)."""
    global _local_only
    if not active():
        yield True
        return
    main = is_main()
    if main:
        _local_only = True
    try:
        yield main
    finally:
        _local_only = False
        _group().barrier()


def digest(obj: Any) -> str:
    """A hash of tensors and plain containers (values, dtypes and shapes; dict keys in order)."""
    import torch

    h = hashlib.sha256()

    def walk(o: Any) -> None:
        if isinstance(o, torch.Tensor):
            t = o.detach().to("cpu").contiguous()
            h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        elif isinstance(o, dict):
            h.update(b"{")
            for k in sorted(o, key=str):
                h.update(repr(k).encode())
                walk(o[k])
            h.update(b"}")
        elif isinstance(o, (list, tuple)):
            h.update(b"[")
            for v in o:
                walk(v)
            h.update(b"]")
        else:
            h.update(repr(o).encode())

    walk(obj)
    return h.hexdigest()[:16]


class RankMismatchError(RuntimeError):
    """A piece of state that must be identical on every rank differs (a rank-dependent update)."""


def check_identical(parts: dict[str, Any], event: str) -> dict[str, str]:
    """Compare :func:`digest` of each named part across ranks; raise :class:`RankMismatchError` naming the
    parts that differ. Returns the digests (rank 0's), recorded in ``metrics.json``."""
    mine = {name: digest(value) for name, value in parts.items()}
    if not active():
        return mine
    every: list[dict[str, str]] = [{} for _ in range(world_size())]
    _group().all_gather_object(every, mine)
    bad = sorted(name for name in mine if len({d[name] for d in every}) > 1)
    if bad:
        raise RankMismatchError(
            f"after event {event}: {', '.join(bad)} differ between ranks (a rank-dependent update; every rank must"
            " update its sample stores from the same data, see clframe.distributed)"
        )
    return mine


def local_world(options: dict[str, Any]) -> int:
    """How many processes ``trainer.devices`` asks for on this machine (1: no DDP)."""
    devices = options.get("devices", 1)
    if devices in (None, "auto"):
        return 1
    if isinstance(devices, list):
        return len(devices)
    devices = int(devices)
    if devices == -1:
        import torch

        return max(1, torch.cuda.device_count())
    return devices


def external_launcher() -> bool:
    """The processes were started by torchrun / srun (``WORLD_SIZE``, or a SLURM step of several tasks), not here."""
    if os.environ.get(LOCAL_ENV):
        return False
    return "WORLD_SIZE" in os.environ or int(os.environ.get("SLURM_NTASKS", "1") or 1) > 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def processes(n: int, config_yaml: str) -> Iterator[None]:
    """Run the block as rank 0 of ``n`` local processes: start ranks 1..n-1 on ``config_yaml`` (the final config
    of this run), let Lightning join them into one process group at the first Fabric, wait for them at the end.
    Nothing is started under an external launcher (``WORLD_SIZE`` set) or for ``n == 1``."""
    if n <= 1 or external_launcher() or is_worker():
        yield
        return
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()), WORLD_SIZE=str(n), NODE_RANK="0")
    env[WORKER_ENV] = env[LOCAL_ENV] = "1"
    with tempfile.TemporaryDirectory(prefix="clframe-ddp-") as tmp:
        path = Path(tmp) / "config.yaml"
        path.write_text(config_yaml)
        children = [
            subprocess.Popen(
                [sys.executable, "-m", "clframe", "_worker", str(path)],
                env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
                stdout=subprocess.DEVNULL,
                preexec_fn=_die_with_parent,
            )
            for r in range(1, n)
        ]
        os.environ.update({k: env[k] for k in ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "NODE_RANK")})
        os.environ.update(RANK="0", LOCAL_RANK="0", **{LOCAL_ENV: "1"})
        try:
            yield
        except BaseException:
            for child in children:
                child.kill()
            raise
        finally:
            leave()
            codes = [child.wait() for child in children]
            for key in ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "NODE_RANK", "RANK", "LOCAL_RANK", LOCAL_ENV):
                os.environ.pop(key, None)
        bad = [c for c in codes if c != 0]
        if bad:
            raise RuntimeError(f"{len(bad)} of {n - 1} worker processes failed (exit status {bad[0]})")


def _die_with_parent() -> None:
    """Linux: a worker gets SIGKILL when rank 0 dies (a killed or preempted run leaves no orphan)."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def cluster_plugins() -> list:
    """The Lightning cluster environment for a process group started here (``[]``: Lightning detects it)."""
    if not os.environ.get(LOCAL_ENV):
        return []
    from lightning.fabric.plugins.environments import LightningEnvironment

    return [LightningEnvironment()]


def threads_per_process(n: int) -> None:
    """On the CPU, split the cores between the ``n`` processes of this machine (no oversubscription)."""
    import torch

    if n > 1 and not torch.cuda.is_available():
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // n))
