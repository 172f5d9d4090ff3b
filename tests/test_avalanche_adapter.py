"""Avalanche benchmarks as clframe streams: every classic benchmark either loads offline from the files present
or names the files it needs (sockets disabled, nothing created); same data and same accuracy matrix as the
native split."""

from __future__ import annotations

import inspect
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from clframe.data import DataNotFoundError, cifar, load_dataset
from clframe.errors import ConfigError, DataError
from clframe.registry import SCENARIOS
from clframe.scenarios import avalanche_adapter as adapter
from clframe.stream import LazyRows
from tests.conftest import require_data
from tests.test_cifar import make_archive
from tests.test_data_formats import write_tar
from tests.test_no_download import MNIST_RAW, mini_mnist_root, no_network, tree  # noqa: F401  (fixtures)

ORDER = [3, 1, 0, 2, 4, 5, 6, 7, 8, 9]
TINY = ("backbone.hidden=[32]", "trainer.max_epochs=1", "trainer.limit_train_batches=4", "strategy.batch_size=64")
CIFAR_PY = tuple(f"cifar-10-batches-py/{f}" for f in [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"])
CIFAR100_PY = ("cifar-100-python/train", "cifar-100-python/test", "cifar-100-python/meta")
TIN = "tinyimagenet/tiny-imagenet-200/"
OMNI = "omniglot/omniglot-py/omniglot-py/"
#: what the error lists for each benchmark without its files, relative to the data root (written out, not imported)
EXPECTED = {
    "SplitMNIST": tuple(f"MNIST/raw/{f}" for f in MNIST_RAW),
    "PermutedMNIST": tuple(f"MNIST/raw/{f}" for f in MNIST_RAW),
    "RotatedMNIST": tuple(f"MNIST/raw/{f}" for f in MNIST_RAW),
    "SplitFMNIST": tuple(f"FashionMNIST/raw/{f}" for f in MNIST_RAW),
    "SplitCIFAR10": (*CIFAR_PY, "cifar-10-batches-py/batches.meta", "cifar-10-python.tar.gz", "cifar10-jpg.tar.gz"),
    "SplitCIFAR100": (*CIFAR100_PY, "cifar-100-python.tar.gz"),
    "SplitCIFAR110": (*CIFAR100_PY, "cifar-100-python.tar.gz"),  # CIFAR-10 is there (the JPEG mirror)
    "SplitCUB200": tuple(
        f"CUB_200_2011/CUB_200_2011/{f}"
        for f in ("images.txt", "train_test_split.txt", "image_class_labels.txt", "bounding_boxes.txt", "images/")
    ),
    "SplitTinyImageNet": (f"{TIN}wnids.txt", f"{TIN}train/", f"{TIN}val/images/", f"{TIN}val/val_annotations.txt"),
    "SplitOmniglot": tuple(f"{OMNI}{s}{e}" for s in ("images_background", "images_evaluation") for e in (".zip", "/")),
    "SplitImageNet": tuple(
        f"imagenet/{f}"
        for f in ("meta.bin", "ILSVRC2012_devkit_t12.tar.gz", "train/", "ILSVRC2012_img_train.tar", "val/")
    )
    + ("imagenet/ILSVRC2012_img_val.tar",),
    "SplitInaturalist": ("inatuarlist2018/train2018.json", "inatuarlist2018/val2018.json"),
    "CORe50": tuple(
        f"core50/{f}"
        for f in ("core50_128x128/", "paths.pkl", "LUP.pkl", "labels.pkl", "labels2names.pkl", "batches_filelists/")
    )
    + ("core50/NIC_v2_391/run0/",),
    "OpenLORIS": tuple(
        f"openloris/{f}" for f in ("train.zip", "validation.zip", "test.zip", "LUP.pkl", "Paths.pkl", "Labels.pkl")
    )
    + ("openloris/batches_filelists.zip", "openloris/batches_filelists/domain/clutter/"),
    "CLStream51": ("stream51/Stream-51_meta_train.json", "stream51/Stream-51_meta_test.json"),
    "CLEAR": tuple(f"clear10/{s}/{f}" for s in ("train", "test") for f in ("labeled_metadata.json", "class_names.txt")),
    "EndlessCLSim": ("endless-cl-sim/IncrementalClasses_Classification/",),
}
LOADS = {"SplitMNIST", "PermutedMNIST", "RotatedMNIST", "SplitCIFAR10", "SplitTinyImageNet"}  # files in `mini_root`
pytestmark = pytest.mark.usefixtures("one_thread")  # Avalanche transforms items one by one: tiny tensor ops
CIFAR_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def cifar10_archive(path: Path, per_class: int = 2) -> None:
    """torchvision's ``cifar-10-python.tar.gz`` layout, every class in every batch (labels i % 10)."""
    import pickle

    rng = np.random.default_rng(0)
    n = 10 * per_class
    files = {
        name: pickle.dumps(
            {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"labels": [i % 10 for i in range(n)]}
        )
        for name in [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]
    }
    files["batches.meta"] = pickle.dumps({b"label_names": [c.encode() for c in CIFAR_CLASSES]})
    write_tar(path, "cifar-10-batches-py", files)


def classic_benchmarks() -> list[str]:
    import avalanche.benchmarks.classic as classic

    names = [n for n in dir(classic) if n[0].isupper() and callable(getattr(classic, n))]
    return sorted(n for n in names if not n.endswith("Metric"))  # CLEARMetric: CLEAR's metric class


def write_tiny_imagenet(root: Path, n_classes: int = 200, size: int = 8) -> None:
    """Avalanche's Tiny ImageNet layout, one train and one val image per class (its 200 wnids)."""
    rng = np.random.default_rng(0)
    base = root / "tiny-imagenet-200"
    wnids = [f"n{i:08d}" for i in range(n_classes)]
    (base / "val" / "images").mkdir(parents=True)
    (base / "wnids.txt").write_text("".join(f"{w}\n" for w in wnids))
    notes = []
    for i, w in enumerate(wnids):
        (base / "train" / w / "images").mkdir(parents=True)
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(
            base / f"train/{w}/images/{w}_0.png"
        )
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(base / f"val/images/val_{i}.png")
        notes.append(f"val_{i}.png\t{w}\t0\t0\t{size}\t{size}\n")
    (base / "val" / "val_annotations.txt").write_text("".join(notes))


@pytest.fixture(scope="module")
def mini_root(tmp_path_factory, mini_mnist_root) -> Path:  # noqa: F811 (the imported fixture)
    """A data root with the first 300 train / 100 test samples of the real MNIST files (byte-exact), a miniature
    CIFAR-10 JPEG mirror (10 classes x 4 train / 2 test) and a Tiny ImageNet tree of 200 classes."""
    root = tmp_path_factory.mktemp("mini_root")
    shutil.copytree(mini_mnist_root / "MNIST", root / "MNIST")
    make_archive(root, per_class=4, classes=CIFAR_CLASSES)
    write_tiny_imagenet(root / "tinyimagenet")
    return root


@pytest.fixture
def at(monkeypatch):
    """``at(root)``: make ``root`` the data root (the data set cache cleared around the test)."""
    load_dataset.cache_clear()

    def use(root: Path) -> Path:
        monkeypatch.setenv("CLFRAME_DATA_ROOT", str(root))
        load_dataset.cache_clear()
        return root

    yield use
    load_dataset.cache_clear()


def build(benchmark: str, **node):
    return SCENARIOS.build({"name": "avalanche", "benchmark": benchmark, **node}, seed=0)


def test_every_classic_benchmark_is_supported_or_refused():
    """A benchmark a new Avalanche adds fails here until the adapter knows its files."""
    assert set(classic_benchmarks()) == set(adapter.BENCHMARKS) | set(adapter.REFUSED)
    assert set(EXPECTED) == set(adapter.BENCHMARKS)


@pytest.mark.parametrize("benchmark", classic_benchmarks())
def test_each_benchmark_loads_offline_or_lists_its_files(benchmark, mini_root, at, no_network):  # noqa: F811 (the imported fixture)
    """With the files present (MNIST, the CIFAR-10 JPEG mirror, Tiny ImageNet) the benchmark builds; otherwise
    one line names every expected path, before Avalanche runs; never a connection, nothing created."""
    at(mini_root)
    before = tree(mini_root)
    params = inspect.signature(adapter._benchmark_fn(benchmark)).parameters
    args = {"n_experiences": 2} if "n_experiences" in params else {}
    if benchmark in adapter.REFUSED:
        with pytest.raises(ConfigError, match=f"scenario.benchmark='{benchmark}'.*expert models"):
            build(benchmark, args=args)
    elif benchmark in LOADS:
        s = build(benchmark, args=args, setting="class" if benchmark.startswith("Split") else "domain")
        first = s.experiences[0]
        assert len(s.experiences) == 2 and len(first.train) > 0 and len(first.test) > 0
        assert tuple(first.train.x.shape[1:]) == s.input_shape and first.train.x.dtype == torch.float32
        assert 0 <= float(first.train.x[:].min()) and float(first.train.x[:].max()) <= 1
    else:
        with pytest.raises(DataNotFoundError) as info:
            build(benchmark, args=args)
        msg = str(info.value)
        assert "\n" not in msg and "never downloads" in msg and msg.startswith(f"Avalanche {benchmark} (")
        listed = [p for p in EXPECTED[benchmark] if str(mini_root / p) in msg]
        assert listed == list(EXPECTED[benchmark])
        if benchmark == "SplitCIFAR110":  # only what is missing is named
            assert "cifar10-jpg.tar.gz" not in msg and "cifar-10-batches-py" not in msg
    assert no_network == []
    created = sorted(set(tree(mini_root)) - set(before))
    assert set(before) <= set(tree(mini_root)) and all(p.startswith(cifar.FOLDER) for p in created)  # JPEG cache only


def test_file_lists_follow_avalanche(mini_root):
    """The adapter's lists are the names Avalanche's own metadata and code use."""
    from avalanche.benchmarks.classic import core50, openloris
    from avalanche.benchmarks.datasets.clear.clear import _CLEAR_DATA_SPLITS, SEED_LIST
    from avalanche.benchmarks.datasets.core50 import core50_data
    from avalanche.benchmarks.datasets.endless_cl_sim import endless_cl_sim_data
    from avalanche.benchmarks.datasets.openloris import openloris_data

    assert {k: v.rstrip("/") for k, v in core50.scen2dirs.items()} == adapter.CORE50_FILELISTS
    assert {k: f"batches_filelists/domain/{v}" for k, v in adapter.OPENLORIS_FILELISTS.items()} == openloris.fac2dirs
    assert set(adapter.CLEAR_NAMES) == _CLEAR_DATA_SPLITS
    assert adapter.CLEAR_SEEDS == SEED_LIST
    assert [f"{v}.zip" for v in adapter.ENDLESS_FOLDERS.values()] == [n for n, *_ in endless_cl_sim_data.data[:3]]
    need = adapter.required_files("CORe50", {"dataset_root": "/r"})
    assert {p.name for p in need if p.suffix == ".pkl"} == {n for n, *_ in core50_data.data if n.endswith(".pkl")}
    need = adapter.required_files("OpenLORIS", {"dataset_root": "/r"})
    assert {p.name for p in need if p.suffix} == {n for n, *_ in openloris_data.avl_vps_data}


def test_split_mnist_adapter_equals_native_split(mini_root, at):
    at(mini_root)
    ava = build("SplitMNIST", args={"n_experiences": 5, "fixed_class_order": ORDER})
    nat = SCENARIOS.build({"name": "split", "dataset": "mnist", "class_order": ORDER}, seed=0)
    assert (ava.n_classes, ava.input_shape, ava.setting) == (nat.n_classes, nat.input_shape, nat.setting)
    for a, b in zip(ava.experiences, nat.experiences, strict=True):
        assert sorted(a.classes) == sorted(b.classes)
        for split in ("train", "test"):  # same samples, same order, same original ids
            da, db = getattr(a, split), getattr(b, split)
            assert torch.equal(da.ids, db.ids) and torch.equal(da.y, db.y) and torch.equal(da.x, db.x)


@pytest.mark.parametrize("source", ["archive", "jpeg"])
def test_split_cifar10_reads_torchvisions_archive_or_the_jpeg_mirror(source, tmp_path, at, no_network):  # noqa: F811 (the imported fixture)
    """Without torchvision's folder, CIFAR-10 comes from its archive or the JPEG mirror, through the same readers
    as the native ``cifar10`` data set: the adapter's inputs are the native ones before standardisation."""
    root = at(tmp_path / "data")
    root.mkdir()
    if source == "archive":
        cifar10_archive(root / "cifar-10-python.tar.gz")
    else:
        make_archive(root, per_class=3, classes=CIFAR_CLASSES)
    order = list(range(10))
    ava = build("SplitCIFAR10", args={"n_experiences": 5, "fixed_class_order": order})
    nat = SCENARIOS.build({"name": "split", "dataset": "cifar10", "class_order": order}, seed=0)
    mean, std = torch.tensor(cifar.MEAN).view(1, 3, 1, 1), torch.tensor(cifar.STD).view(1, 3, 1, 1)
    for a, b in zip(ava.experiences, nat.experiences, strict=True):
        assert a.classes == b.classes
        for split in ("train", "test"):
            da, db = getattr(a, split), getattr(b, split)
            assert torch.equal(da.ids, db.ids) and torch.equal(da.y, db.y)
            assert torch.allclose((da.x - mean) / std, db.x, atol=1e-5)
    recorded = adapter.record_source.__globals__["_SOURCES"]["avalanche_cifar-10-batches-py"]
    assert recorded["lossless"] == (source == "archive") and no_network == []


def test_large_experiences_are_read_per_batch(mini_root, at, no_network):  # noqa: F811 (the imported fixture)
    """Above ``in_memory_mb`` the inputs stay on disk (LazyRows over Avalanche's data set), row for row the
    inputs of the materialised build."""
    at(mini_root)
    args = {"n_experiences": 10}
    eager = build("SplitTinyImageNet", args=args)
    lazy = build("SplitTinyImageNet", args=args, in_memory_mb=0)
    assert eager.n_classes == 200 and eager.input_shape == (3, 8, 8) and len(eager.experiences) == 10
    for a, b in zip(eager.experiences, lazy.experiences, strict=True):
        assert isinstance(b.train.x, LazyRows) and not isinstance(a.train.x, LazyRows)
        assert torch.equal(a.train.ids, b.train.ids) and torch.equal(a.train.y, b.train.y)
        assert torch.equal(a.train.x, b.train.x[:]) and torch.equal(a.test.x[3:7], b.test.x[3:7])
    again = build("SplitTinyImageNet", args=args, in_memory_mb=0)  # a resumed run's stream: the same sources
    refs = [(e.train.x.reference(), f.train.x.reference()) for e, f in zip(lazy.experiences, again.experiences)]
    assert len({r["source"] for r, _ in refs}) == 10  # one source per experience, named by what it reads
    assert all(r["source"] == s["source"] and torch.equal(r["rows"], s["rows"]) for r, s in refs)
    restored = LazyRows.from_reference(refs[3][0])  # a sample store's checkpoint reads the same rows
    assert torch.equal(restored[:], lazy.experiences[3].train.x[:])
    sized = build("SplitTinyImageNet", args=args, image_size=4)
    assert sized.input_shape == (3, 4, 4) and no_network == []


def test_avalanche_order_keeps_class_grouping(mini_root, at):
    at(mini_root)
    s = build("SplitMNIST", order="avalanche", args={"n_experiences": 5, "fixed_class_order": list(range(10))})
    y = s.experiences[0].train.y
    assert torch.equal(y, y.sort().values) and len(y.unique()) == 2  # why order=original exists


def test_files_avalanche_finds_corrupt_are_named_not_downloaded(tmp_path, at, no_network):  # noqa: F811 (the imported fixture)
    """Files present but unreadable: Avalanche's DownloadableDataset would download; here it says which folder."""
    root = at(tmp_path / "data")
    for name in ("Stream-51_meta_train.json", "Stream-51_meta_test.json"):
        (root / "stream51").mkdir(parents=True, exist_ok=True)
        (root / "stream51" / name).write_text("not json")
    before = tree(root)
    with pytest.raises(DataError) as info:
        build("CLStream51")
    assert f"Stream51: the files under {root / 'stream51'} are incomplete or corrupt" in str(info.value)
    assert no_network == [] and tree(root) == before
    from avalanche.benchmarks.datasets.downloadable_dataset import DownloadableDataset

    assert DownloadableDataset._load_dataset.__name__ == "_load_dataset"  # the guard is undone


def test_dataset_root_relative_to_the_data_root(mini_root, tmp_path, at):
    root = at(tmp_path / "data")
    shutil.copytree(mini_root / "MNIST", root / "elsewhere" / "MNIST")
    s = build("PermutedMNIST", setting="domain", args={"n_experiences": 2, "dataset_root": "elsewhere"})
    assert len(s.experiences[0].train) == 300
    assert adapter.dataset_roots("CLEAR", {"data_name": "clear100"}) == {"dataset_root": root / "clear100"}


def test_adapter_errors(tmp_path, at):
    with pytest.raises(ConfigError, match="scenario.benchmark='SplitMNISTX'.*SplitMNIST"):
        build("SplitMNISTX")
    with pytest.raises(ConfigError, match=r"scenario.args.n_exp=3 is invalid; valid choices: .*n_experiences"):
        build("SplitMNIST", args={"n_exp": 3})
    with pytest.raises(ConfigError, match=r"scenario.args.download=True .*never downloads"):
        build("CLStream51", args={"download": True})
    with pytest.raises(ConfigError, match=r"scenario.args.scenario='nicv9'.*nicv2_391"):
        build("CORe50", args={"scenario": "nicv9"})
    with pytest.raises(ConfigError, match=r"scenario.args.seed=7 is invalid; valid choices: 0, 1, 2, 3, 4"):
        build("CLEAR", args={"evaluation_protocol": "iid", "seed": 7})
    with pytest.raises(ConfigError, match=r"scenario.args.semseg=True"):
        build("EndlessCLSim", args={"semseg": True})
    at(tmp_path)
    with pytest.raises(DataNotFoundError, match="CLFRAME_DATA_ROOT"):  # never falls through to a download
        build("SplitMNIST")


@pytest.mark.slow
def test_split_cifar10_adapter_on_the_real_jpeg_mirror(at):
    """The data root's CIFAR-10 (the JPEG mirror here) through Avalanche equals the native split before
    standardisation (60,000 images through Avalanche's data sets: minutes on a CPU)."""
    require_data("cifar10")
    ava = build("SplitCIFAR10", args={"n_experiences": 5, "fixed_class_order": list(range(10))})
    nat = SCENARIOS.build({"name": "split", "dataset": "cifar10", "class_order": list(range(10))}, seed=0)
    mean, std = torch.tensor(cifar.MEAN).view(1, 3, 1, 1), torch.tensor(cifar.STD).view(1, 3, 1, 1)
    assert [len(e.train) for e in ava.experiences] == [10000] * 5
    for a, b in zip(ava.experiences, nat.experiences, strict=True):
        assert torch.equal(a.test.ids, b.test.ids) and torch.allclose((a.test.x - mean) / std, b.test.x, atol=1e-5)


@pytest.mark.slow
def test_split_mnist_adapter_gives_native_accuracy_matrix(make_cfg):
    """Same data in the same order + same seed -> bit-identical accuracy matrix (runs both streams)."""
    require_data("mnist")
    from clframe.runner import run

    order = f"[{','.join(map(str, ORDER))}]"
    r_ava = run(make_cfg("scenario=avalanche", f"+scenario.args.fixed_class_order={order}", "strategy=naive", *TINY))
    r_nat = run(make_cfg("scenario=split_mnist", f"scenario.class_order={order}", "strategy=naive", *TINY))
    assert r_ava["accuracy_matrix"] == r_nat["accuracy_matrix"]


@pytest.mark.slow
def test_permuted_mnist_adapter():
    require_data("mnist")
    s = build("PermutedMNIST", setting="domain", args={"n_experiences": 2})
    a, b = s.experiences
    assert s.setting == "domain" and a.classes == b.classes == list(range(10))
    assert len(a.train) == 60000 and len(a.test) == 10000 and a.train.x.shape[1:] == (1, 28, 28)
    assert torch.equal(a.train.y, b.train.y) and not torch.equal(a.train.x, b.train.x)
    # a permutation moves pixels: every image keeps its multiset of pixel values
    assert torch.equal(a.train.x[0].flatten().sort().values, b.train.x[0].flatten().sort().values)
