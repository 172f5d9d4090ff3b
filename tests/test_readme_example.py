"""The README's strategy example is exactly strategies/l2.py + its YAML, and it works."""

import re
from pathlib import Path

import torch

from clframe.runner import run
from tests.conftest import BLOBS

ROOT = Path(__file__).resolve().parent.parent


def _block(marker: str, lang: str) -> str:
    text = (ROOT / "README.md").read_text()
    match = re.search(re.escape(marker) + r"\s*```" + lang + r"\n(.*?)```", text, re.S)
    assert match, f"README block after {marker} not found"
    return match.group(1)


def test_readme_example_is_the_shipped_strategy():
    assert _block("<!-- example-strategy -->", "python") == (ROOT / "strategies/l2.py").read_text()
    assert _block("<!-- example-yaml -->", "yaml") == (ROOT / "experiments/strategy/l2.yaml").read_text()


def test_readme_example_runs_and_anchors_the_weights(make_cfg):
    """With a strong penalty the weights move far less during experience 1 than naive's do."""
    drift = {}
    for name, extra in (("naive", []), ("l2", ["strategy.lam=5"])):
        cfg = make_cfg(*BLOBS, f"strategy={name}", "scenario.n_experiences=2", "keep_checkpoints=true", *extra)
        assert run(cfg)["accuracy_matrix"][0][0] > 0.9
        w0, w1 = (torch.load(f"{cfg.run_dir}/checkpoints/exp_{i}.pt", weights_only=True)["model"] for i in (0, 1))
        drift[name] = sum(float((w1[k] - w0[k]).pow(2).sum()) for k in w0 if k.startswith(("backbone", "head")))
        if name == "l2":
            anchor = torch.load(f"{cfg.run_dir}/checkpoints/exp_0.pt", weights_only=True)["extra"]["anchor"]
            assert all(torch.equal(anchor[k], w0[k]) for k in anchor)
    assert drift["l2"] < 0.5 * drift["naive"], drift
