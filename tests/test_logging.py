"""What reaches the logger: the resolved config as hyperparameters, per-event accuracies on their own axis
(monotonic with the training loss), and the headline metrics once at the end (wandb: run name, group, summary)."""

from __future__ import annotations

import csv
from pathlib import Path

import yaml

from clframe.runner import make_logger, run
from tests.conftest import BLOBS

SMALL = (*BLOBS, "strategy=naive", "backbone.hidden=[8]", "trainer.max_epochs=1", "trainer.log_every_n_steps=1")


def test_csv_log_has_config_event_axis_and_headline(make_cfg):
    cfg = make_cfg(*SMALL, "logger=csv", "seed=3")
    result = run(cfg)
    logs = Path(cfg.run_dir) / "logs"
    hparams = yaml.safe_load((logs / "hparams.yaml").read_text())
    assert hparams["strategy"]["name"] == "naive" and hparams["seed"] == 3 and hparams["scenario"]["name"]
    with open(logs / "metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    steps = [int(r["step"]) for r in rows]
    assert steps == sorted(steps)  # one monotonic axis: accuracies sit at the optimiser step they were taken
    events = [r for r in rows if r.get("event")]
    assert [int(float(r["event"])) for r in events] == list(range(len(result["row_events"])))
    assert int(events[-1]["step"]) == result["optimizer_steps"]
    assert float(events[-1]["exp_0/test/acc"]) == result["rows"][-1][0]
    final = rows[-1]
    assert float(final["cl/avg_acc"]) == result["metrics"]["cl/avg_acc"] and not final.get("cl/fwt")


def test_tensorboard_logger_writes_event_files(make_cfg):
    cfg = make_cfg(*SMALL, "logger=tensorboard")
    run(cfg)
    assert list((Path(cfg.run_dir) / "tb").rglob("events.out.tfevents.*"))


def test_wandb_offline_run_gets_name_and_group_and_completes(make_cfg, monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = make_cfg(*SMALL, "logger=wandb", "seed=2")
    logger = make_logger(cfg, Path(cfg.run_dir), "split_blobs_naive")
    assert logger._wandb_init["name"] == Path(cfg.run_dir).name and logger._wandb_init["group"] == "split_blobs_naive"
    assert run(cfg)["status"] == "complete"
    assert list((Path(cfg.run_dir) / "wandb").glob("offline-run-*/run-*.wandb"))  # `wandb sync` uploads it


class WandbLogger:  # the class name is what the runner checks: a stand-in that records what it is given
    def __init__(self):
        self.hparams, self.rows, self.status = None, [], None
        self.experiment = type("Run", (), {"summary": {}})()

    def log_hyperparams(self, params):
        self.hparams = params

    def log_metrics(self, metrics, step):
        self.rows.append((step, dict(metrics)))

    def save(self):
        pass

    def finalize(self, status):
        self.status = status


def test_headline_metrics_go_to_the_wandb_summary(make_cfg, monkeypatch):
    import clframe.runner as runner

    fake = WandbLogger()
    monkeypatch.setattr(runner, "make_logger", lambda cfg, run_dir, group=None: fake)
    result = run(make_cfg(*SMALL))
    assert fake.status == "success" and fake.hparams["strategy"]["name"] == "naive"
    headline = {k: v for k, v in result["metrics"].items() if v is not None}
    assert fake.experiment.summary == headline and fake.rows[-1] == (result["optimizer_steps"], headline)
