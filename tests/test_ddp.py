"""Several processes for one run (``trainer.devices=2``, gloo on the CPU): the same numbers as one process.

Each run here is a real 2-process run through ``python -m clframe run`` (rank 0 starts the worker). The stream
learns blobs 0-1, 2-3, forgets class 1 (GA), then learns 4-5, 6-7 and 8-9: training, online and end-of-experience
memories, a forget request, evaluation, checkpoints and resume all go through the distributed path.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from clframe.config import compose
from clframe.errors import ConfigError
from clframe.fit import Engine

STREAM = [
    "scenario=unlearning_digits",
    "scenario.base={name:split,dataset:blobs,setting:class,n_experiences:5}",
    "scenario.requests=[{after:1,type:class,classes:[1]}]",
    "unlearning=ga",
    "unlearning.steps=5",
    "unlearning.eval_every=0",
    "trainer.max_epochs=3",
    "strategy.batch_size=16",  # 80 samples per experience: 5 batches, each split 8 + 8
    "trainer.accelerator=cpu",
    "logger=none",
    "progress_bar=none",
    "plots=false",
]
BUFFER = {"replay": "strategy.buffer_size=40", "er": "strategy.buffer_size=40", "mixcd": "strategy.buffer_size=40"}
STORE = {"replay": "buffer", "er": "memory", "mixcd": "buffer"}  # mixcd: also per-sample statistics, gathered


def _cmd(strategy: str, devices: int, run_dir, *extra: str) -> list[str]:
    overrides = [*STREAM, f"strategy={strategy}", BUFFER[strategy], f"trainer.devices={devices}", *extra]
    return [sys.executable, "-m", "clframe", "run", *overrides, f"run_dir={run_dir}"]


def _run(cmd, env=None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)


def _load(run_dir) -> tuple[dict, dict]:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return metrics, torch.load(run_dir / "checkpoints/last.pt", weights_only=False)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """replay, er and mixcd, each with 1 and with 2 processes (the same global batch)."""
    root = tmp_path_factory.mktemp("ddp")
    out = {}
    for strategy in STORE:
        for devices in (1, 2):
            run_dir = root / f"{strategy}{devices}"
            res = _run(_cmd(strategy, devices, run_dir))
            assert res.returncode == 0, res.stderr[-3000:]
            out[strategy, devices] = _load(run_dir)
    return out


@pytest.mark.parametrize("strategy", list(STORE))
def test_two_processes_match_one(runs, strategy):
    """Same global batch: each rank trains on half of it and DDP averages the gradients, so the weights equal
    the single-process weights to float rounding and the accuracy matrix is the same; the memory (filled at
    the end of an experience for replay, from every all-gathered batch for er) holds exactly the same samples."""
    (m1, c1), (m2, c2) = runs[strategy, 1], runs[strategy, 2]
    assert m2["status"] == "complete" and m2["distributed"]["processes"] == 2
    assert m1["rows"] == m2["rows"] and len(m2["rows"]) == 6  # 5 learn events and the forget request
    for key, value in c1["model"].items():
        torch.testing.assert_close(c2["model"][key], value, atol=1e-5, rtol=0, msg=key)
    store1, store2 = c1["extra"]["stores"][STORE[strategy]], c2["extra"]["stores"][STORE[strategy]]
    assert torch.equal(store1["data"]["ids"], store2["data"]["ids"]) and len(store1["data"]["ids"]) == 40
    assert torch.equal(store1["data"]["x"], store2["data"]["x"])
    for key, value in store1["extra"].items():  # DER++'s logits, mix-cd's observed correctness / loss / groups
        torch.testing.assert_close(store2["extra"][key], value, atol=1e-5, rtol=0, msg=key)
    assert "distributed" not in m1  # one process: nothing to compare


@pytest.mark.parametrize("strategy", list(STORE))
def test_every_rank_purges_and_agrees_after_every_event(runs, strategy):
    """After each of the 6 events both ranks held the same weights and the same store (the runner compares
    digests and stops otherwise); the forgotten class is gone from the memory on every rank."""
    metrics, ckpt = runs[strategy, 2]
    checks = metrics["distributed"]["rank_checks"]
    assert len(checks) == 6 and all({"weights", f"store {STORE[strategy]}"} <= set(c) for c in checks)
    assert len({c[f"store {STORE[strategy]}"] for c in checks}) == 6  # the memory changed at every event
    forgotten = ckpt["extra"]["stores"][STORE[strategy]]["data"]["y"]
    assert len(forgotten) == 40 and not (forgotten == 1).any()
    assert metrics["forget_requests"][0]["removed_classes"] == [1]


def test_a_rank_dependent_store_stops_the_run(tmp_path):
    """A method that fills its memory differently on each rank is caught after the first experience, by name."""
    (tmp_path / "rankdep.py").write_text(
        textwrap.dedent(
            """
            import torch
            from clframe.registry import register_strategy
            from clframe.strategies.replay import Replay

            @register_strategy("rank_dependent_replay")
            class RankDependentReplay(Replay):
                def after_experience(self, exp):
                    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
                    self.buffer.add(exp.train, torch.Generator().manual_seed(self.seed + rank))
            """
        )
    )
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    cmd = _cmd("replay", 2, tmp_path / "run", "plugins=[rankdep]", "strategy.name=rank_dependent_replay")
    res = _run(cmd, env=env)
    assert res.returncode == 1, res.stderr[-2000:]
    assert "store buffer differ between ranks" in res.stderr and "after event" in res.stderr
    metrics = json.loads((tmp_path / "run/metrics.json").read_text())
    assert metrics["status"] == "failed" and metrics["rows"] == []  # stopped before the first row was recorded


def test_killed_two_process_run_resumes_to_the_same_matrix(tmp_path, runs):
    """SIGKILL of both processes after the third event (the forget request: the purged memory must come back from
    the checkpoint); ``resume=`` with 2 processes continues to the uninterrupted run's matrix and memory. The kill
    follows an event that a learn event follows: a forget event is quick enough to finish inside the poll."""
    run_dir = tmp_path / "killed"
    proc = subprocess.Popen(
        _cmd("er", 2, run_dir), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    events, t0 = run_dir / "events.jsonl", time.time()
    while time.time() - t0 < 300:
        if events.is_file() and len(events.read_text().splitlines()) >= 3:
            os.killpg(proc.pid, signal.SIGKILL)  # rank 0 and its worker
            break
        if proc.poll() is not None:
            pytest.fail(f"run ended before it could be killed: {proc.stderr.read()[-2000:]}")
        time.sleep(0.05)
    proc.wait()
    partial = json.loads((run_dir / "metrics.json").read_text())
    assert partial["status"] != "complete" and len(partial["rows"]) == 3
    res = _run([sys.executable, "-m", "clframe", "run", f"resume={run_dir}"])
    assert res.returncode == 0, res.stderr[-3000:]
    resumed, ckpt = _load(run_dir)
    uninterrupted, ref = runs["er", 2]
    assert resumed["status"] == "complete" and resumed["rows"] == uninterrupted["rows"]
    assert resumed["distributed"]["rank_checks"] == uninterrupted["distributed"]["rank_checks"]
    memory, expected = ckpt["extra"]["stores"]["memory"], ref["extra"]["stores"]["memory"]
    assert torch.equal(memory["data"]["ids"], expected["data"]["ids"])


@pytest.mark.parametrize(
    ("overrides", "key"),
    [(["trainer.strategy=fsdp"], "trainer.strategy"), (["trainer.engine=lightning"], "trainer.engine")],
)
def test_several_devices_need_ddp_on_the_fabric_engine(overrides, key):
    with pytest.raises(ConfigError, match=key):
        Engine.from_config(compose(["trainer.devices=2", *overrides]))


def test_ddp_on_one_device_is_one_process(tmp_path):
    """``trainer.strategy=ddp`` with one device trains as one process would (no process group needed)."""
    run_dir = tmp_path / "one"
    res = _run(_cmd("replay", 1, run_dir, "trainer.strategy=ddp"))
    assert res.returncode == 0, res.stderr[-2000:]
    assert "distributed" not in json.loads((run_dir / "metrics.json").read_text())


def test_batchnorm_statistics_are_the_same_on_every_rank(tmp_path):
    """BatchNorm's running statistics come from each rank's shard; after training rank 0's are broadcast (as DDP
    does before every forward), so the ranks' models stay identical and the rank check passes."""
    run_dir = tmp_path / "bn"
    overrides = ["scenario=split_digits", "backbone=cnn", "backbone.channels=[8,16]", "strategy=replay"]
    cmd = [sys.executable, "-m", "clframe", "run", *overrides, "trainer.max_epochs=1", "trainer.devices=2"]
    res = _run([*cmd, *STREAM[-4:], f"run_dir={run_dir}"])
    assert res.returncode == 0, res.stderr[-2000:]
    metrics, ckpt = _load(run_dir)
    assert len(metrics["distributed"]["rank_checks"]) == 5
    assert any("running_mean" in k for k in ckpt["model"])
