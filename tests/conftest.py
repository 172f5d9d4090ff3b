"""Shared fixtures: tiny configs, data requirements (fail under CI, skip elsewhere)."""

from __future__ import annotations

import os

import pytest

from clframe.data import load_dataset
from clframe.errors import DataNotFoundError


def require_data(name: str) -> None:
    """Skip the test when a data set is missing, unless ``CLFRAME_REQUIRE_DATA=1`` (CI): then fail."""
    try:
        load_dataset(name)
    except DataNotFoundError as err:
        if os.environ.get("CLFRAME_REQUIRE_DATA") == "1":
            pytest.fail(f"CLFRAME_REQUIRE_DATA=1 but {name} is missing: {err}")
        pytest.skip(f"{name} not available: {err}")


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models: one CPU thread is much faster than two on a busy machine (restored afterwards). A module
    asks for it with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def make_cfg(tmp_path):
    """``make_cfg(*overrides)`` → a composed config writing to a fresh ``tmp_path`` sub-folder,
    without logger, progress bar or plots unless the overrides ask for them."""
    from clframe.config import compose

    counter = iter(range(1000))

    def make(*overrides: str):
        base = [f"run_dir={tmp_path / f'run{next(counter)}'}", "logger=none", "progress_bar=none", "plots=false"]
        return compose([*base, *overrides])

    return make


BLOBS = ("scenario=split_blobs", "backbone.hidden=[32]", "trainer.max_epochs=3", "strategy.batch_size=32")


def crash_at(monkeypatch, strategy_cls, exp_id: int, cfg, method: str = "before_experience") -> dict:
    """Run ``cfg`` but crash (KeyboardInterrupt) when ``strategy_cls.<method>`` is called for experience
    ``exp_id`` (``"unlearn"`` for a forget request); return the checkpoint left behind, so a test can
    inspect it and then resume with ``resume=<run_dir>``."""
    import torch

    from clframe.runner import run

    original = getattr(strategy_cls, method)

    def crash(self, exp):
        if exp.id == exp_id:
            raise KeyboardInterrupt
        original(self, exp)

    monkeypatch.setattr(strategy_cls, method, crash)
    with pytest.raises(KeyboardInterrupt):
        run(cfg)
    monkeypatch.setattr(strategy_cls, method, original)
    return torch.load(f"{cfg.run_dir}/checkpoints/last.pt", weights_only=True)
