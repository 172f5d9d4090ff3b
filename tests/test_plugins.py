"""Plugins: built-in modules register by discovery, out-of-tree methods through ``plugins=`` (and their
configs through ``hydra.searchpath``), and a run directory never makes clframe import code."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from clframe.errors import ConfigError
from clframe.registry import PLUGIN_PACKAGES, STRATEGIES, package_dir, scan_registrations
from clframe.runner import run

ROOT = Path(__file__).resolve().parent.parent

METHOD = '''
"""An out-of-tree strategy: naive plus an L1 pull of the head toward zero."""
from clframe.registry import register_strategy
from clframe.strategy import Strategy


@register_strategy("lab_l1_head")
class L1Head(Strategy):
    def __init__(self, *args, l1: float = 0.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.l1 = l1

    def training_loss(self, batch):
        return super().training_loss(batch) + self.l1 * self.head.weight.abs().sum()
'''


def _lab(tmp_path: Path) -> Path:
    (tmp_path / "my_lab").mkdir(parents=True)
    (tmp_path / "my_lab" / "__init__.py").write_text("")
    (tmp_path / "my_lab" / "methods.py").write_text(METHOD)
    (tmp_path / "configs" / "strategy").mkdir(parents=True)
    (tmp_path / "configs" / "strategy" / "lab_l1_head.yaml").write_text(
        "name: lab_l1_head\nl1: 0.001\nlr: 0.05\noptimizer: sgd\nmomentum: 0.0\nbatch_size: 32\n"
    )
    return tmp_path


def test_an_out_of_tree_strategy_runs_from_the_command_line(tmp_path):
    lab = _lab(tmp_path / "lab")
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "clframe", "run", "plugins=[my_lab.methods]",
           f"hydra.searchpath=[file://{lab / 'configs'}]", "strategy=lab_l1_head", "scenario=split_blobs",
           "scenario.n_experiences=2", "backbone.hidden=[16]", "logger=none", "progress_bar=none", "plots=false",
           f"run_dir={run_dir}"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": f"{lab}{os.pathsep}{ROOT}"}
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "complete" and metrics["accuracy_matrix"][0][0] > 0.8
    saved = (run_dir / "config.yaml").read_text()
    assert "name: lab_l1_head" in saved and "l1: 0.001" in saved and "my_lab.methods" in saved


def test_an_unknown_plugin_is_a_config_error(make_cfg):
    with pytest.raises(ConfigError, match=r"^plugins='my_lab_that_does_not_exist' is invalid; expected an importable"):
        run(make_cfg("plugins=[my_lab_that_does_not_exist]"))


def test_resume_never_imports_a_plugin_named_in_the_run_directory(make_cfg, tmp_path, monkeypatch):
    """A colleague's run directory names a module that writes a file when imported: resuming refuses,
    names the key and imports nothing; passing the plugin oneself is the way to trust it."""
    evil = tmp_path / "evil"
    evil.mkdir()
    marker = tmp_path / "imported"
    (evil / "evil_plugin_mod.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    monkeypatch.syspath_prepend(str(evil))
    cfg = make_cfg("scenario=split_blobs", "backbone.hidden=[8]", "trainer.max_epochs=1")
    run(cfg)
    saved = Path(cfg.run_dir) / "config.yaml"
    saved.write_text(saved.read_text().replace("plugins: []", "plugins:\n- evil_plugin_mod"))
    with pytest.raises(ConfigError, match=r"^plugins=\['evil_plugin_mod'\] is invalid.*never imports code"):
        run(make_cfg(f"resume={cfg.run_dir}"))
    assert not marker.exists() and "evil_plugin_mod" not in sys.modules
    from clframe.runner import check_resume_overrides

    trusted = [f"resume={cfg.run_dir}", "plugins=[evil_plugin_mod]"]
    check_resume_overrides(trusted)  # the command line the refusal asks for is accepted ...
    assert run(make_cfg(*trusted))["status"] == "complete" and marker.exists()  # ... and imports what it names


def test_every_registering_module_is_discovered_without_a_list():
    """The package __init__ files hold no import list: discovery alone registers every decorated part."""
    scanned = {name for name, _ in scan_registrations()["strategy"]}
    assert scanned and scanned <= set(STRATEGIES.names())
    for pkg in PLUGIN_PACKAGES:
        init = (package_dir(pkg) / "__init__.py").read_text()
        assert "registers" not in init.split('"""')[-1], pkg  # no "import x  # registers ..." lines left
    body = textwrap.dedent((package_dir("clframe.strategies") / "__init__.py").read_text())
    assert "import" not in body.split('"""')[-1]


def test_a_users_own_metrics_module_does_not_shadow_clframe(tmp_path):
    """The plugin folders install as clframe.strategies / clframe.metrics / ...: a researcher's own
    ``metrics.py`` and ``strategies/`` in the working folder are never imported by clframe."""
    (tmp_path / "metrics.py").write_text("raise RuntimeError('the user module was imported')\n")
    (tmp_path / "strategies").mkdir()
    (tmp_path / "strategies" / "__init__.py").write_text("raise RuntimeError('the user package was imported')\n")
    cmd = [sys.executable, "-m", "clframe", "run", "scenario=split_blobs", "scenario.n_experiences=2",
           "backbone.hidden=[8]", "trainer.max_epochs=1", "logger=none", "progress_bar=none", "plots=false",
           f"run_dir={tmp_path / 'run'}"]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["status"] == "complete"
