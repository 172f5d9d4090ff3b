"""Configs compose, the registry and its source scan agree, the CLI commands work."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from clframe.config import compose, config_dir
from clframe.registry import REGISTRIES, load_plugins, scan_registrations

GROUP_FILES = sorted(
    (p.parent.name, p.stem) for p in config_dir().glob("*/*.yaml") if p.parent.name not in ("experiment", "hydra")
)
PRESETS = sorted(p.stem for p in (config_dir() / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("group,name", GROUP_FILES)
def test_every_group_config_composes(group, name):
    cfg = compose([f"{group}={name}"])
    assert cfg.seed == 0


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_composes(preset):
    cfg = compose([f"experiment={preset}"])
    assert cfg.strategy.name and cfg.scenario.name


@pytest.mark.parametrize("group", ["strategy", "scenario", "backbone"])
def test_every_config_names_a_registered_part(group):
    load_plugins()
    names = REGISTRIES[group].names()
    for path in (config_dir() / group).glob("*.yaml"):
        cfg = compose([f"{group}={path.stem}"])
        assert cfg[group].name in names, f"{path} names unknown {group} {cfg[group].name!r}"


def test_source_scan_matches_imported_registry():
    """`clframe list` reads decorators from source; it must agree with what import registers."""
    load_plugins()
    scanned = scan_registrations()
    for kind, registry in REGISTRIES.items():
        assert [n for n, _ in scanned[kind]] == registry.names(), kind


def test_list_shows_whole_first_sentences_and_where_each_name_goes():
    """`clframe list` prints each registered part's first sentence whole (it spans docstring lines), and each
    group's header says which config key takes the names."""
    from clframe.registry import first_sentence

    doc = "Penalty toward the weights after the\nlast experience (Kirkpatrick et al. 2017, e.g. ``lam=1``).\nMore."
    assert (
        first_sentence(doc)
        == "Penalty toward the weights after the last experience (Kirkpatrick et al. 2017, e.g. ``lam=1``)."
    )
    assert first_sentence("One line, no full stop\n\nA second paragraph.") == "One line, no full stop"
    for kind, items in scan_registrations().items():
        for name, doc in items:
            assert doc.endswith((".", "?", "!")), (kind, name, doc)  # a whole sentence, not a cut line
    res = _cli("list", env={**os.environ, "COLUMNS": "100"})
    out = res.stdout.splitlines()
    assert res.returncode == 0 and max(len(line) for line in out) <= 100
    assert "unlearner  (unlearning=NAME):" in out and "evaluator  (evaluators=[{name: NAME}]):" in out
    ewc = next(i for i, line in enumerate(out) if line.startswith("  ewc "))
    entry = " ".join(" ".join(out[ewc : ewc + 3]).split())  # its wrapped lines
    assert entry.startswith("ewc Quadratic penalty") and entry.endswith("near their values `theta*_t`.")
    assert any(line.startswith("  cl/avg_acc ") for line in out)  # metrics as the keys objective= takes


def _cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "clframe", *args], capture_output=True, text=True, **kw)


def test_help_and_list_do_not_import_torch():
    code = "import sys; from clframe.cli import main; main(['list']); main(['--help']); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "naive" in out and "ewc" in out and "clframe run" in out
    assert out.strip().splitlines()[-1] == "False"


def test_unknown_command_exits_2():
    res = _cli("frobnicate")
    assert res.returncode == 2 and "valid choices" in res.stderr


def test_run_plot_compare_end_to_end(tmp_path):
    """`clframe run` writes the run directory; `plot` overlays two runs; `compare` prints a table."""
    runs = []
    for strat in ("naive", "replay"):
        d = tmp_path / strat
        res = _cli(
            "run",
            "scenario=split_blobs",
            f"strategy={strat}",
            "backbone.hidden=[32]",
            "trainer.max_epochs=2",
            f"run_dir={d}",
            "progress_bar=none",
        )
        assert res.returncode == 0, res.stderr[-2000:]
        assert "accuracy matrix" in res.stdout and "cl/avg_acc" in res.stdout
        for f in (
            "config.yaml",
            "metrics.json",
            "accuracy_matrix.csv",
            "events.jsonl",
            "checkpoints/last.pt",
            "plots/accuracy_matrix.png",
            "plots/stability.png",
            "plots/curves.png",
            "logs/metrics.csv",
        ):
            assert (d / f).is_file(), f
        m = json.loads((d / "metrics.json").read_text())
        assert m["status"] == "complete" and len(m["accuracy_matrix"]) == 5
        runs.append(str(d))
    res = _cli("plot", *runs, "-o", str(tmp_path / "cmp"))
    assert res.returncode == 0 and (tmp_path / "cmp" / "comparison_curves.png").stat().st_size > 10_000
    res = _cli("compare", *runs)
    assert res.returncode == 0
    lines = res.stdout.strip().splitlines()
    assert lines[0].startswith("| run |") and len(lines) == 4 and "replay" in lines[3]


def test_multirun_sweep(tmp_path):
    res = _cli(
        "run",
        "-m",
        "scenario=split_blobs",
        "strategy=naive,lwf",
        "backbone.hidden=[16]",
        "trainer.max_epochs=1",
        "progress_bar=none",
        "plots=false",
        "logger=none",
        f"hydra.sweep.dir={tmp_path}",
        cwd=str(Path.cwd()),
    )
    assert res.returncode == 0, res.stderr[-2000:]
    found = sorted(p.parent.name for p in tmp_path.glob("*/metrics.json"))
    assert len(found) == 2 and "naive" in found[0] and "lwf" in found[1]
