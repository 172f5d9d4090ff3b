"""clframe never downloads: every scenario config builds with the network disabled, and an Avalanche
benchmark whose files are missing fails before Avalanche runs, listing the files, creating nothing."""

from __future__ import annotations

import os
import shutil
import socket
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from clframe.config import compose, config_dir
from clframe.data import DataNotFoundError, data_root
from clframe.errors import DataError
from clframe.registry import SCENARIOS, accepted_params

MNIST_RAW = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
CIFAR10_PY = tuple(f"cifar-10-batches-py/{f}" for f in [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]) + (
    "cifar-10-batches-py/batches.meta",
)
CIFAR100_PY = ("cifar-100-python/train", "cifar-100-python/test", "cifar-100-python/meta")
#: every benchmark the adapter supports -> the files it needs, relative to the data root (written out, not imported)
EXPECTED_FILES = {
    "SplitMNIST": tuple(f"MNIST/raw/{f}" for f in MNIST_RAW),
    "PermutedMNIST": tuple(f"MNIST/raw/{f}" for f in MNIST_RAW),
    "RotatedMNIST": tuple(f"MNIST/raw/{f}" for f in MNIST_RAW),
    "SplitFMNIST": tuple(f"FashionMNIST/raw/{f}" for f in MNIST_RAW),
    "SplitCIFAR10": CIFAR10_PY,
    "SplitCIFAR100": CIFAR100_PY,
    "SplitCIFAR110": CIFAR10_PY + CIFAR100_PY,
}
#: smaller versions of the scenario configs, applied where the builder has the key
SMALL = {"train_per_class": 20, "test_per_class": 10, "train_per_experience": 50}
FEWER_EXPERIENCES = {"permuted": 2, "rotated": 2}


@pytest.fixture
def no_network(monkeypatch):
    """Every way of opening a connection raises and is recorded; the test asserts the record is empty."""
    attempts: list[tuple[str, tuple]] = []

    def refuse(name: str):
        def blocked(*args, **kwargs):
            attempts.append((name, args))
            raise OSError(f"network disabled by the test ({name})")

        return blocked

    for name in ("connect", "connect_ex"):
        monkeypatch.setattr(socket.socket, name, refuse(f"socket.{name}"))
    for name in ("create_connection", "getaddrinfo"):
        monkeypatch.setattr(socket, name, refuse(name))
    return attempts


def tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def write_idx(path: Path, arr: np.ndarray) -> None:
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = ((0x08 << 8) | arr.ndim).to_bytes(4, "big") + np.asarray(arr.shape, dtype=">i4").tobytes()
    path.write_bytes(header + arr.tobytes())


def read_idx_prefix(path: Path, n: int) -> np.ndarray:
    raw = path.read_bytes()
    ndim = raw[3]
    dims = np.frombuffer(raw, dtype=">i4", count=ndim, offset=4)
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)[:n]


def skip_or_fail(what: str, err: Exception) -> None:
    """As ``tests.conftest.require_data``: skip when data are missing, fail under ``CLFRAME_REQUIRE_DATA=1``."""
    if os.environ.get("CLFRAME_REQUIRE_DATA") == "1":
        pytest.fail(f"CLFRAME_REQUIRE_DATA=1 but {what} is missing: {err}")
    pytest.skip(f"{what} not available: {err}")


@pytest.fixture(scope="module")
def mini_mnist_root(tmp_path_factory) -> Path:
    """A data root holding the first 300 train / 100 test samples of the real MNIST files (byte-exact),
    so Avalanche's MNIST benchmarks build in a second through the real torchvision path."""
    raw = data_root() / "MNIST" / "raw"
    if not all((raw / f).is_file() for f in MNIST_RAW):
        skip_or_fail("MNIST", FileNotFoundError(raw))
    root = tmp_path_factory.mktemp("mini_mnist")
    for f in MNIST_RAW:
        write_idx(root / "MNIST" / "raw" / f, read_idx_prefix(raw / f, 300 if f.startswith("train") else 100))
    return root


def scenario_configs() -> list[str]:
    return sorted(p.stem for p in (config_dir() / "scenario").glob("*.yaml"))


@pytest.fixture(scope="module")
def text_files(tmp_path_factory) -> dict[str, Path]:
    """Local files for the text scenarios that read them: a TOFU-layout folder and a JSONL file."""
    from tests.test_text_data import _tofu_folder, _write_jsonl

    root = tmp_path_factory.mktemp("text")
    (root / "tofu").mkdir()
    _tofu_folder(root / "tofu")
    rows = [{"prompt": f"Q{i}?", "answer": f"A{i}.", "stage": i % 2, "forget": i == 3} for i in range(8)]
    _write_jsonl(root / "pairs.jsonl", rows)
    return {"tofu": root / "tofu", "text_jsonl": root / "pairs.jsonl"}


def small_node(config: str, mini_root: Path, text_files: dict[str, Path] | None = None) -> dict:
    node = OmegaConf.to_container(compose([f"scenario={config}"]).scenario, resolve=True)
    if node.get("path") == "???" and text_files:  # a scenario of local files: give it small ones
        node["path"] = str(text_files[node["name"]])
        if node["name"] == "tofu":
            node["forget_percent"] = 1
    accepted = accepted_params(SCENARIOS.get(node["name"])) or set()
    node.update({k: v for k, v in SMALL.items() if k in accepted})
    if node["name"] in FEWER_EXPERIENCES:
        node["n_experiences"] = FEWER_EXPERIENCES[node["name"]]
    if node["name"] == "avalanche":  # Avalanche cannot subset: point it at the 400-sample MNIST copy
        node["args"] = {**node.get("args", {}), "dataset_root": str(mini_root)}
        node["args"]["n_experiences"] = min(node["args"].get("n_experiences") or 5, 5)
    return node


def test_the_guard_catches_a_download(no_network):
    """The fixture sees what torchvision's downloader does (urllib -> getaddrinfo / connect)."""
    with pytest.raises(OSError):
        urllib.request.urlopen("http://yann.lecun.com/exdb/mnist/", timeout=1)
    assert no_network


def test_plain_avalanche_would_download_and_create_folders(tmp_path, no_network):
    """Why the adapter exists as it does: Avalanche's own SplitFMNIST on an empty root creates folders
    and tries to connect (refused here)."""
    from avalanche.benchmarks.classic import SplitFMNIST

    with pytest.raises(RuntimeError, match="Error downloading"):
        SplitFMNIST(n_experiences=5, dataset_root=str(tmp_path))
    assert no_network and (tmp_path / "FashionMNIST" / "raw").is_dir()


def test_every_registered_scenario_has_a_config():
    covered = {OmegaConf.to_container(compose([f"scenario={c}"]).scenario)["name"] for c in scenario_configs()}
    ours = {n for n in SCENARIOS.names() if SCENARIOS.get(n).__module__.startswith("clframe.")}
    assert ours <= covered, f"scenarios without an experiments/scenario/*.yaml: {sorted(ours - covered)}"


@pytest.mark.parametrize("config", scenario_configs())
def test_scenario_builds_without_network(config, no_network, mini_mnist_root, text_files):
    node = small_node(config, mini_mnist_root, text_files)
    before = tree(mini_mnist_root), tree(data_root())
    try:
        stream = SCENARIOS.build(node, seed=0)
    except DataNotFoundError as err:
        skip_or_fail(config, err)
    assert no_network == [], f"scenario={config} tried to connect: {no_network}"
    assert len(stream.experiences) >= 2 or node.get("n_experiences") == 1
    first = next(e for e in stream.experiences if e.kind == "learn")
    assert len(first.train) > 0 and len(first.test) > 0 and tuple(first.train.x.shape[1:]) == stream.input_shape
    assert (tree(mini_mnist_root), tree(data_root())) == before  # nothing created next to the data


@pytest.mark.parametrize("benchmark", ["SplitMNIST", "PermutedMNIST", "RotatedMNIST"])
def test_avalanche_mnist_benchmarks_build_offline(benchmark, no_network, mini_mnist_root):
    before = tree(mini_mnist_root)
    setting = "class" if benchmark == "SplitMNIST" else "domain"
    args = {"n_experiences": 2, "dataset_root": str(mini_mnist_root)}
    s = SCENARIOS.build({"name": "avalanche", "benchmark": benchmark, "setting": setting, "args": args}, seed=0)
    assert no_network == [] and tree(mini_mnist_root) == before
    assert len(s.experiences) == 2 and s.input_shape == (1, 28, 28)
    sizes = [(len(e.train), len(e.test)) for e in s.experiences]
    if benchmark == "SplitMNIST":  # the 400 samples, split by class
        assert sum(tr for tr, _ in sizes) == 300 and sum(te for _, te in sizes) == 100
    else:  # every experience: all samples, transformed
        assert sizes == [(300, 100)] * 2 and not torch.equal(s.experiences[0].train.x, s.experiences[1].train.x)
    x = s.experiences[0].train.x
    assert x.dtype == torch.float32 and 0 <= float(x.min()) and float(x.max()) <= 1


def test_split_fmnist_builds_offline_from_the_data_root(tmp_path, monkeypatch, no_network):
    """Fashion-MNIST (PIL images in torchvision) through the adapter: no download, ToTensor inputs in [0, 1]."""
    rng = np.random.default_rng(0)
    for split, n in (("train", 40), ("t10k", 20)):
        write_idx(tmp_path / "FashionMNIST/raw" / f"{split}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        write_idx(tmp_path / "FashionMNIST/raw" / f"{split}-labels-idx1-ubyte", np.arange(n) % 10)
    monkeypatch.setenv("CLFRAME_DATA_ROOT", str(tmp_path))
    before = tree(tmp_path)
    s = SCENARIOS.build({"name": "avalanche", "benchmark": "SplitFMNIST", "args": {"n_experiences": 5}}, seed=0)
    assert no_network == [] and tree(tmp_path) == before  # torchvision's processed/ folder is not created
    images = read_idx_prefix(tmp_path / "FashionMNIST/raw/train-images-idx3-ubyte", 40)
    e = s.experiences[0]
    assert s.n_classes == 10 and len(e.train) == 8 and len(e.test) == 4
    assert torch.allclose(e.train.x[:, 0], torch.from_numpy(images[e.train.ids.numpy()]).float() / 255)


@pytest.mark.parametrize("benchmark", sorted(EXPECTED_FILES))
def test_missing_files_are_listed_and_nothing_is_created(benchmark, tmp_path, monkeypatch, no_network):
    root = tmp_path / "data"
    root.mkdir()
    monkeypatch.setenv("CLFRAME_DATA_ROOT", str(root))
    with pytest.raises(DataNotFoundError) as info:
        SCENARIOS.build({"name": "avalanche", "benchmark": benchmark, "args": {"n_experiences": 5}}, seed=0)
    msg = str(info.value)
    for rel in EXPECTED_FILES[benchmark]:
        assert str(root / rel) in msg
    assert f"data root {root}" in msg and "never downloads" in msg and "\n" not in msg
    assert tree(root) == [] and no_network == []


def test_only_the_missing_file_is_named(tmp_path, monkeypatch, no_network, mini_mnist_root):
    root = tmp_path / "data"
    shutil.copytree(mini_mnist_root, root)
    (root / "MNIST/raw/t10k-labels-idx1-ubyte").unlink()
    monkeypatch.setenv("CLFRAME_DATA_ROOT", str(root))
    before = tree(root)
    with pytest.raises(DataNotFoundError, match="files not found: [^,]*t10k-labels-idx1-ubyte. Set"):
        SCENARIOS.build({"name": "avalanche", "benchmark": "SplitMNIST"}, seed=0)
    assert tree(root) == before and no_network == []


def test_corrupt_cifar_pickles_are_named_not_downloaded(tmp_path, monkeypatch, no_network):
    """torchvision's CIFAR with download=True re-downloads files that fail its md5 check; here they are named."""
    root = tmp_path / "data"
    for rel in CIFAR10_PY:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"not a pickle")
    monkeypatch.setenv("CLFRAME_DATA_ROOT", str(root))
    before = tree(root)
    with pytest.raises(DataError) as info:
        SCENARIOS.build({"name": "avalanche", "benchmark": "SplitCIFAR10", "args": {"n_experiences": 5}}, seed=0)
    assert all(str(root / rel) in str(info.value) for rel in CIFAR10_PY) and "intact copies" in str(info.value)
    assert tree(root) == before and no_network == []


def test_loader_swap_is_undone_after_success_and_failure(tmp_path, monkeypatch, mini_mnist_root):
    import avalanche.benchmarks.classic.ccifar10 as ccifar10
    import avalanche.benchmarks.classic.cmnist as cmnist

    original_mnist, original_cifar = cmnist.get_mnist_dataset, ccifar10.get_cifar10_dataset
    args = {"n_experiences": 5, "dataset_root": str(mini_mnist_root)}
    SCENARIOS.build({"name": "avalanche", "benchmark": "SplitMNIST", "args": args}, seed=0)
    for rel in CIFAR10_PY:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    monkeypatch.setenv("CLFRAME_DATA_ROOT", str(tmp_path))
    with pytest.raises(DataError):
        SCENARIOS.build({"name": "avalanche", "benchmark": "SplitCIFAR10", "args": {"n_experiences": 5}}, seed=0)
    assert cmnist.get_mnist_dataset is original_mnist and ccifar10.get_cifar10_dataset is original_cifar


def test_expected_files_match_torchvision():
    """The lists above are the files torchvision itself checks (so none is missed or invented)."""
    from torchvision.datasets import CIFAR10, CIFAR100, MNIST

    from clframe.scenarios.avalanche_adapter import BENCHMARKS, required_files

    assert set(EXPECTED_FILES) <= set(BENCHMARKS)  # the others: tests/test_avalanche_adapter.py
    mnist = {os.path.splitext(os.path.basename(url))[0] for url, _ in MNIST.resources}
    assert mnist == set(MNIST_RAW)
    for cls, expected in ((CIFAR10, CIFAR10_PY), (CIFAR100, CIFAR100_PY)):
        names = [f for f, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]
        assert [f"{cls.base_folder}/{n}" for n in names] == list(expected)
    root = Path("/r")
    for benchmark, rels in EXPECTED_FILES.items():
        given = {"dataset_root": root, "dataset_root_cifar10": root, "dataset_root_cifar100": root}
        assert required_files(benchmark, given) == [root / r for r in rels]


def test_unsupported_benchmark_is_a_config_error():
    from clframe.errors import ConfigError

    with pytest.raises(
        ConfigError, match="scenario.benchmark='ExMLMNIST'.*SplitFMNIST.*expert models.*never downloads"
    ):
        SCENARIOS.build({"name": "avalanche", "benchmark": "ExMLMNIST"}, seed=0)
