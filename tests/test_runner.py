"""The runner: every strategy learns a stream, seeds reproduce, kills resume exactly, bad input fails clearly."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from clframe.data import load_dataset
from clframe.errors import ConfigError, DataNotFoundError, NonFiniteLossError
from clframe.registry import STRATEGIES, load_plugins
from clframe.runner import run
from tests.conftest import BLOBS

load_plugins()
# strategies that need more than the defaults to run on the synthetic stream
SMOKE_OVERRIDES: dict[str, list[str]] = {"ewc": ["strategy.lam=10"]}


@pytest.mark.parametrize("name", STRATEGIES.names())
def test_every_strategy_learns_blobs(make_cfg, name):
    """Two experiences of well-separated blobs: every strategy must learn the current experience
    (class-IL, or task-IL for strategies that need task ids)."""
    setting = "class" if "class" in STRATEGIES.get(name).capabilities.settings else "task"
    cfg = make_cfg(
        *BLOBS,
        f"strategy={name}",
        "scenario.n_experiences=2",
        f"scenario.setting={setting}",
        *SMOKE_OVERRIDES.get(name, []),
    )
    R = np.asarray(run(cfg)["accuracy_matrix"])
    assert R.shape == (2, 2)
    assert R[0, 0] > 0.8 and R[1, 1] > 0.5, R


def test_same_seed_same_matrix_other_seed_differs(make_cfg):
    overrides = ("scenario=split_digits", "backbone.hidden=[32]", "strategy=replay", "strategy.batch_size=32")
    cfgs = [make_cfg(*overrides, f"seed={s}") for s in (3, 3, 4)]
    a, b, c = (run(cfg)["accuracy_matrix"] for cfg in cfgs)
    assert a == b
    weights = [torch.load(f"{cfg.run_dir}/checkpoints/last.pt", weights_only=True)["model"] for cfg in cfgs]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert a != c and not torch.equal(weights[0]["head.weight"], weights[2]["head.weight"])


def test_class_and_task_incremental_heads(make_cfg):
    """Class-IL masks unseen classes (zero accuracy on future experiences); task-IL uses the task id."""
    digits = (
        "scenario=split_digits",
        "backbone.hidden=[64]",
        "strategy=naive",
        "strategy.lr=0.05",
        "strategy.batch_size=32",
        "trainer.max_epochs=10",
    )
    R_class = np.asarray(run(make_cfg(*digits))["accuracy_matrix"])
    R_task = np.asarray(run(make_cfg(*digits, "scenario.setting=task"))["accuracy_matrix"])
    assert np.all(np.triu(R_class, 1) == 0)
    assert R_class[-1, :-1].mean() < 0.3  # naive class-IL forgets earlier classes
    assert R_task[-1].mean() > R_class[-1].mean() + 0.3  # with the task id the same model answers well


def _kill_after(cmd, run_dir, n_events, timeout=300):
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    events = run_dir / "events.jsonl"
    t0 = time.time()
    while time.time() - t0 < timeout:
        if events.is_file() and len(events.read_text().splitlines()) >= n_events:
            proc.send_signal(signal.SIGKILL)
            break
        if proc.poll() is not None:
            pytest.fail(f"run ended before it could be killed: {proc.stderr.read()[-2000:]}")
        time.sleep(0.05)
    proc.wait()
    return proc.returncode


def test_killed_run_resumes_to_identical_matrix(tmp_path, make_cfg):
    overrides = [
        "scenario=split_digits",
        "strategy=ewc",
        "trainer.max_epochs=15",
        "strategy.batch_size=32",
        "backbone.hidden=[64]",
        "progress_bar=none",
        "logger=none",
        "plots=false",
    ]
    run_dir = tmp_path / "killed"
    cmd = [sys.executable, "-m", "clframe", "run", *overrides, f"run_dir={run_dir}"]
    assert _kill_after(cmd, run_dir, n_events=2) == -signal.SIGKILL
    partial = json.loads((run_dir / "metrics.json").read_text())
    assert partial["status"] != "complete" and 2 <= len(partial["accuracy_matrix"]) < 5
    res = subprocess.run([sys.executable, "-m", "clframe", "run", f"resume={run_dir}"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    resumed = json.loads((run_dir / "metrics.json").read_text())
    uninterrupted = run(make_cfg(*overrides))
    assert resumed["status"] == "complete"
    assert resumed["accuracy_matrix"] == uninterrupted["accuracy_matrix"]


def test_checkpoint_loads_weights_only_and_holds_strategy_state(make_cfg):
    cfg = make_cfg(*BLOBS, "strategy=replay", "strategy.buffer_size=50")
    run(cfg)
    ckpt = torch.load(f"{cfg.run_dir}/checkpoints/last.pt", weights_only=True)
    assert ckpt["runner"]["next"] == 5
    assert len(ckpt["extra"]["stores"]["buffer"]["data"]["y"]) == 50


@pytest.mark.parametrize(
    "overrides,key",
    [
        (["strategy.name=nope"], "strategy.name"),
        (["backbone.name=nope"], "backbone.name"),
        (["scenario.name=nope"], "scenario.name"),
        (["scenario.dataset=nope"], "scenario.dataset"),
        (["scenario.n_experiences=3"], "scenario.n_experiences"),
        (["scenario.class_order=[0,1,2,3,4,5,6,7,8,8]"], "scenario.class_order"),
        (["scenario.class_order=[0,1,2]"], "scenario.class_order"),
        (["strategy.lr=0"], "strategy.lr"),
        (["strategy.lr=-0.1"], "strategy.lr"),
        (["strategy=replay", "strategy.buffer_size=0"], "strategy.buffer_size"),
        (["strategy=replay", "strategy.buffer_size=-5"], "strategy.buffer_size"),
        (["strategy=replay", "strategy.buffer_policy=fifo"], "strategy.buffer_policy"),
        (["+strategy.frobnicate=1"], "strategy.frobnicate"),
        (["progress_bar=fancy"], "progress_bar"),
    ],
)
def test_bad_config_names_key_value_and_choices(make_cfg, overrides, key):
    cfg = make_cfg(*BLOBS, *overrides)
    with pytest.raises(ConfigError) as err:
        run(cfg)
    msg = str(err.value)
    assert msg.startswith(key + "=")
    assert "valid choices" in msg or "expected" in msg
    metrics = os.path.join(cfg.run_dir, "metrics.json")
    assert not os.path.exists(metrics) or json.load(open(metrics))["status"] != "complete"


def test_unknown_config_file_lists_options(make_cfg):
    from hydra.errors import MissingConfigException

    with pytest.raises(MissingConfigException, match="Available options"):
        make_cfg("strategy=nope")


def test_missing_data_root_names_the_variable(make_cfg, monkeypatch, tmp_path):
    monkeypatch.setenv("CLFRAME_DATA_ROOT", str(tmp_path / "nowhere"))
    load_dataset.cache_clear()
    try:
        with pytest.raises(DataNotFoundError, match="CLFRAME_DATA_ROOT"):
            run(make_cfg("scenario=split_mnist"))
    finally:
        load_dataset.cache_clear()


def test_nan_loss_stops_and_keeps_results(make_cfg):
    cfg = make_cfg(*BLOBS, "strategy=naive", "strategy.lr=1e30", "strategy.momentum=0.9")
    with pytest.raises(NonFiniteLossError, match=r"experience \d+, step \d+"):
        run(cfg)
    m = json.load(open(os.path.join(cfg.run_dir, "metrics.json")))
    assert m["status"] == "failed" and "non-finite loss" in m["error"]
    assert len(m["rows"]) == len(m["accuracy_matrix"])  # rows written before the failure are kept
