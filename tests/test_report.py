"""``clframe compare``: sweep folders, unlearning / retrieval columns, the unlearning method, md / csv / LaTeX."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
import yaml

from clframe.cli import main
from clframe.report import compare_table


def _fake_run(path, strategy, seed, metrics, unlearning=None):
    path.mkdir(parents=True)
    m = {"scenario": "unlearning_digits", "strategy": strategy, "seed": seed, "status": "complete", "metrics": metrics}
    (path / "metrics.json").write_text(json.dumps(m))
    (path / "config.yaml").write_text(yaml.safe_dump({"seed": seed, "unlearning": unlearning}))


@pytest.fixture
def sweep(tmp_path):
    root = tmp_path / "multirun" / "2026-12-02_10-00-00"
    base = {"cl/avg_acc": 0.5, "cl/avg_inc_acc": 0.6, "cl/forgetting": 0.1, "cl/bwt": -0.1, "cl/fwt": None}
    _fake_run(root / "0_naive", "naive", 0, base)
    _fake_run(root / "1_npo", "replay", 1, {**base, "unlearn/forget_acc": 0.125, "unlearn/avg_gap": 0.03},
              {"name": "npo", "beta": 0.5, "steps": 50})  # fmt: skip
    (root / "multirun.yaml").write_text("not a run\n")
    return root


def test_compare_reads_a_sweep_folder_and_shows_unlearning_columns(sweep):
    lines = compare_table([str(sweep.parent)]).splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header[:7] == ["run", "scenario", "strategy", "unlearning", "n", "seeds", "status"]
    assert header[-2:] == ["unlearn/avg_gap", "unlearn/forget_acc"]
    assert lines[2].startswith("| 0_naive |") and lines[2].endswith("| – | – |")  # not reported by this run
    assert "| npo beta=0.5 steps=50 | 1 | 1 | complete |" in lines[3] and lines[3].endswith("| 3.00 | 12.50 |")


def test_compare_writes_csv_and_latex(sweep, tmp_path):
    rows = list(csv.reader(io.StringIO(compare_table([str(sweep)], "csv"))))
    assert rows[0][3] == "unlearning" and rows[2][-1] == "12.50" and rows[1][-1] == ""
    tex = compare_table([str(sweep)], "latex")
    assert tex.startswith("\\begin{tabular}{lllllll") and "unlearn/forget\\_acc" in tex and "0\\_naive" in tex
    assert tex.count("\\\\\n") == 3 and tex.rstrip().endswith("\\end{tabular}")
    out = tmp_path / "table.tex"
    assert main(["compare", str(sweep), "-o", str(out)]) == 0 and out.read_text() == tex


def test_compare_aggregates_seeds_of_one_config(tmp_path):
    """Runs whose configs differ only in the seed are one row: n, the seeds, mean ± std (sample std)."""
    base = {"cl/avg_acc": 0.5, "cl/avg_inc_acc": 0.6, "cl/forgetting": 0.1, "cl/bwt": -0.1, "cl/fwt": None}
    for seed, acc in ((0, 0.5), (1, 0.7), (2, 0.6)):
        _fake_run(tmp_path / f"s{seed}", "naive", seed, {**base, "cl/avg_acc": acc})
    _fake_run(tmp_path / "other", "naive", 0, base, {"name": "ga"})  # another config: its own row
    lines = compare_table([str(tmp_path)]).splitlines()
    assert len(lines) == 4
    row = next(line for line in lines if "| 3 | 0,1,2 |" in line)
    assert row.startswith("| s0 (+2) |") and "| complete | 60.00 ± 10.00 | 60.00 ± 0.00 |" in row
    per_run = compare_table([str(tmp_path)], per_run=True).splitlines()
    assert len(per_run) == 6 and per_run[0].startswith("| run | scenario | strategy | unlearning | seed |")
    assert "$\\pm$" in compare_table([str(tmp_path)], "latex")


def test_compare_of_a_folder_without_runs_is_one_line_error(tmp_path, capsys):
    assert main(["compare", str(tmp_path)]) == 1
    assert capsys.readouterr().err.strip() == f"error: {tmp_path} holds no run (no metrics.json below it)"


def test_report_is_one_self_contained_file_for_several_runs(make_cfg, tmp_path):
    import torch

    from clframe.runner import run
    from tests.conftest import BLOBS

    small = (*BLOBS, "backbone.hidden=[8]", "trainer.max_epochs=1")
    a = make_cfg(*small, "strategy=naive", "plots=true")
    b = make_cfg(*small, "strategy=replay", "plots=false")
    ra, rb = run(a), run(b)
    md = tmp_path / "report.md"
    assert main(["report", a.run_dir, b.run_dir, "-o", str(md)]) == 0
    text = md.read_text()
    assert text.count("](data:image/png;base64,") == 3 + 3 + 1  # each run's plots + the overlay; no files
    assert "| exp 0 | " + f"{100 * ra['accuracy_matrix'][0][0]:.2f} | · |" in text  # future cells are not 0.0
    assert "name: replay" in text and f"| {torch.__version__} |" in text and "Status `complete`" in text
    assert f"| {100 * rb['metrics']['cl/avg_acc']:.2f} |" in text
    assert not (Path(b.run_dir) / "plots").exists()  # plots=false run: drawn for the report, not into its folder
    html = tmp_path / "report.html"
    assert main(["report", a.run_dir, "-o", str(html)]) == 0
    page = html.read_text()
    assert page.startswith("<!doctype html>") and "<td class='future'>·</td>" in page and page.count("<img") == 3


def test_plot_writes_vector_formats(make_cfg, tmp_path):
    from clframe.runner import run
    from tests.conftest import BLOBS

    cfg = make_cfg(*BLOBS, "strategy=naive", "backbone.hidden=[8]", "trainer.max_epochs=1")
    run(cfg)
    assert main(["plot", cfg.run_dir, "--format", "svg"]) == 0
    svg = Path(cfg.run_dir) / "plots" / "accuracy_matrix.svg"
    assert "<svg" in svg.read_text()[:500]
    assert main(["plot", cfg.run_dir, cfg.run_dir, "-o", str(tmp_path / "cmp"), "--format", "pdf"]) == 0
    assert (tmp_path / "cmp" / "comparison_curves.pdf").read_bytes().startswith(b"%PDF")


def test_plot_overlays_seeds_as_one_line_with_a_band(tmp_path, monkeypatch):
    """``clframe plot`` of several seeds of one config: one mean line with a ±std band (matplotlib
    ``fill_between``), coloured by method; a single-seed config stays a plain line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.axes

    from clframe.plots import plot_comparison

    base = {"cl/avg_acc": 0.5, "cl/forgetting": 0.1}
    dirs = []
    for seed, curve in ((0, [1.0, 0.5]), (1, [1.0, 0.7]), (2, [1.0, 0.6])):
        d = tmp_path / f"s{seed}"
        _fake_run(d, "naive", seed, base)
        m = json.loads((d / "metrics.json").read_text())
        m["curves"] = {"cl/avg_acc": curve, "cl/forgetting": [0.0, 0.2]}
        m["accuracy_matrix"] = [[1.0]]
        (d / "metrics.json").write_text(json.dumps(m))
        dirs.append(str(d))
    bands, lines = [], []
    real_fill, real_plot = matplotlib.axes.Axes.fill_between, matplotlib.axes.Axes.plot
    monkeypatch.setattr(
        matplotlib.axes.Axes,
        "fill_between",
        lambda self, x, lo, hi, **k: bands.append((lo, hi)) or real_fill(self, x, lo, hi, **k),
    )
    monkeypatch.setattr(
        matplotlib.axes.Axes,
        "plot",
        lambda self, x, y, **k: lines.append((list(y), k.get("label"))) or real_plot(self, x, y, **k),
    )
    (path,) = plot_comparison(dirs, tmp_path / "out")
    assert path.is_file() and len(lines) == 2 and len(bands) == 2  # one line per panel, one band each
    assert lines[0][0] == pytest.approx([100.0, 60.0]) and "3 seeds" in lines[0][1]
    assert list(bands[0][1] - bands[0][0]) == pytest.approx([0.0, 20.0])  # ±1 sample std (10 points)
