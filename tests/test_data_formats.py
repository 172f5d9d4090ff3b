"""Standard formats: torchvision's CIFAR-10 / CIFAR-100 pickles (read safely, preferred over the JPEG mirror),
gzipped MNIST IDX files, ImageFolder trees decoded lazily; each with the usual missing / broken file errors.
Every file is a tiny synthetic one written in tmp_path."""

from __future__ import annotations

import gzip
import io
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from clframe.data import MNIST_FILES, DataNotFoundError, cifar, formats, lazy_subset, load_dataset
from clframe.errors import ConfigError, DataError
from clframe.registry import SCENARIOS
from clframe.stream import LazyRows, TensorLoader
from tests.test_cifar import make_archive

PER_BATCH = 4  # images per CIFAR batch file


@pytest.fixture
def root(tmp_path, monkeypatch) -> Path:
    """An empty data root (and CIFAR cache folder) in tmp_path; the data set cache is cleared around the test."""
    data = tmp_path / "data"
    data.mkdir()
    monkeypatch.setenv("CLFRAME_DATA_ROOT", str(data))
    monkeypatch.setenv("CLFRAME_CACHE_DIR", str(tmp_path / "cache"))
    load_dataset.cache_clear()
    yield data
    load_dataset.cache_clear()


def one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert "\n" not in msg
    return msg


# ---------------------------------------------------------------------------------------------------- CIFAR


def cifar_batch(seed: int, label_keys: dict[bytes, int]) -> dict:
    """A batch in CIFAR's layout: b"data" uint8 (N, 3072) (R, G, B planes of 32x32), labels as lists of ints."""
    rng = np.random.default_rng(seed)
    batch = {b"batch_label": f"batch {seed}".encode(), b"data": rng.integers(0, 256, (PER_BATCH, 3072), dtype=np.uint8)}
    batch[b"filenames"] = [f"img_{seed}_{i}.png".encode() for i in range(PER_BATCH)]
    for key, n in label_keys.items():
        batch[key] = rng.integers(0, n, PER_BATCH).tolist()
    return batch


def cifar10_files(protocol: int = 2) -> dict[str, bytes]:
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    files = {n: pickle.dumps(cifar_batch(i, {b"labels": 10}), protocol=protocol) for i, n in enumerate(names)}
    meta = {b"label_names": [c.encode() for c in ("airplane", "automobile", "bird", "cat", "deer")] + [b"x"] * 5}
    files["batches.meta"] = pickle.dumps(meta, protocol=protocol)
    return files


def cifar100_files(protocol: int = 2) -> dict[str, bytes]:
    keys = {b"fine_labels": 100, b"coarse_labels": 20}
    files = {n: pickle.dumps(cifar_batch(i, keys), protocol=protocol) for i, n in enumerate(("train", "test"))}
    meta = {b"fine_label_names": [f"f{i}".encode() for i in range(100)], b"coarse_label_names": [b"c"] * 20}
    files["meta"] = pickle.dumps(meta, protocol=protocol)
    return files


def write_tar(path: Path, folder: str, files: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(f"{folder}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def write_folder(folder: Path, files: dict[str, bytes]) -> Path:
    folder.mkdir(parents=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return folder


def unpickle(data: bytes) -> dict:
    return pickle.loads(data)  # the test's own files


def denormalise(x: torch.Tensor, mean, std) -> torch.Tensor:
    return (x * torch.tensor(std).view(-1, 3, 1, 1) + torch.tensor(mean).view(-1, 3, 1, 1)) * 255


def test_cifar10_from_torchvision_archive_round_trips(root):
    files = cifar10_files()
    write_tar(root / "cifar-10-python.tar.gz", "cifar-10-batches-py", files)
    train, test = load_dataset("cifar10")
    batches = [unpickle(files[f"data_batch_{i}"]) for i in range(1, 6)]
    raw = np.concatenate([b[b"data"] for b in batches]).reshape(-1, 3, 32, 32)
    assert train.x.dtype == torch.float32 and train.x.shape == (5 * PER_BATCH, 3, 32, 32) and len(test) == PER_BATCH
    assert torch.equal(train.x[0], cifar.normalize(torch.from_numpy(raw[:1]))[0])  # same normalisation as JPEGs
    assert torch.equal(denormalise(train.x, cifar.MEAN, cifar.STD).round().to(torch.uint8), torch.from_numpy(raw))
    assert train.y.tolist() == sum((b[b"labels"] for b in batches), [])
    assert test.y.tolist() == unpickle(files["test_batch"])[b"labels"]
    path = str(root / "cifar-10-python.tar.gz")
    assert cifar.cifar10_source() == {"format": "pickle", "path": path, "lossless": True}
    assert sorted(p.name for p in root.iterdir()) == ["cifar-10-python.tar.gz"]  # read in memory, nothing written


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cifar10_folder_any_pickle_protocol(root, protocol):
    """Python 2's originals and re-pickled copies (protocol 2 stores bytes via _codecs.encode, 5 via _frombuffer)."""
    files = cifar10_files(protocol)
    write_folder(root / "cifar-10-batches-py", files)
    train, test = load_dataset("cifar10")
    first = unpickle(files["data_batch_1"])[b"data"][0].reshape(1, 3, 32, 32)
    assert torch.equal(train.x[:1], cifar.normalize(torch.from_numpy(first)))
    assert cifar.cifar10_source()["path"] == str(root / "cifar-10-batches-py")


def test_pickles_are_preferred_over_the_jpeg_mirror_which_stays_the_fallback(root):
    make_archive(root)  # cifar10-jpg.tar.gz, 2 classes x 3 images
    write_folder(root / "cifar-10-batches-py", cifar10_files())
    train, _ = load_dataset("cifar10")
    assert len(train) == 5 * PER_BATCH and cifar.cifar10_source()["format"] == "pickle"
    for f in (root / "cifar-10-batches-py").iterdir():
        f.unlink()
    (root / "cifar-10-batches-py").rmdir()
    load_dataset.cache_clear()
    train, _ = load_dataset("cifar10")
    assert len(train) == 6 and cifar.cifar10_source() == {
        "format": "jpeg",
        "path": str(root / cifar.ARCHIVE),
        "lossless": False,
    }


def test_python2_pickle_layout_of_the_original_files(root):
    """The originals were written by Python 2's cPickle: arrays via numpy.core.multiarray._reconstruct with the
    pixels as a py2 str (bytes under encoding="bytes"), numpy.dtype with a py2 str byte order, INT 00 for False."""
    raw = (
        b"\x80\x02}q\x01(U\x04dataq\x02cnumpy.core.multiarray\n_reconstruct\nq\x03cnumpy\nndarray\nq\x04K\x00\x85U\x01b"
        b"\x87Rq\x05(K\x01K\x02K\x03\x86cnumpy\ndtype\nq\x06U\x02u1K\x00K\x01\x87Rq\x07(K\x03U\x01|NNNJ\xff\xff\xff\xff"
        b"J\xff\xff\xff\xffK\x00tbI00\nU\x06\x00\x01\x02\x03\x04\x05tbU\x06labelsq\x08](K\x01K\x02eu."
    )
    out = formats.safe_unpickle(raw, "data_batch_1", "fix")
    assert out[b"labels"] == [1, 2] and out[b"data"].dtype == np.uint8
    assert out[b"data"].tolist() == [[0, 1, 2], [3, 4, 5]]


class Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("where", ["top", "nested"])
def test_a_pickle_referring_to_a_global_is_refused_not_run(root, tmp_path, where):
    marker = tmp_path / "pwned"
    files = cifar10_files()
    batch = unpickle(files["data_batch_2"])
    files["data_batch_2"] = pickle.dumps(Evil(marker) if where == "top" else {**batch, b"labels": Evil(marker)})
    write_folder(root / "cifar-10-batches-py", files)
    with pytest.raises(DataError) as err:
        load_dataset("cifar10")
    msg = one_line(err)
    assert f"{root / 'cifar-10-batches-py' / 'data_batch_2'} refers to {os.system.__module__}.system" in msg
    assert "refused without unpickling it" in msg and "intact copy" in msg
    assert not marker.exists()  # nothing was executed
    with pytest.raises(DataError, match="x.pkl refers to builtins.eval"):
        formats.safe_unpickle(b"cbuiltins\neval\n(S'1+1'\ntR.", "x.pkl", "fix")
    with pytest.raises(DataError, match="not a plain numeric type"):  # object arrays would hold arbitrary objects
        formats.safe_unpickle(pickle.dumps(np.array([1, "a"], dtype=object), protocol=2), "y.pkl", "fix")


def test_cifar10_missing_everywhere_lists_every_source(root):
    with pytest.raises(DataNotFoundError) as err:
        load_dataset("cifar10")
    msg = one_line(err)
    for rel in [*(f"cifar-10-batches-py/{f}" for f in formats.CIFAR10_PY.files), "cifar-10-python.tar.gz"]:
        assert str(root / rel) in msg
    assert str(root / cifar.ARCHIVE) in msg and f"data root {root}" in msg and "never downloads" in msg


def test_incomplete_folder_names_the_missing_file(root):
    files = cifar10_files()
    del files["data_batch_3"]
    write_folder(root / "cifar-10-batches-py", files)
    with pytest.raises(DataNotFoundError, match=r"files not found: [^,]*cifar-10-batches-py/data_batch_3\. Set"):
        load_dataset("cifar10")


def test_broken_cifar_archives_and_pickles(root):
    archive = root / "cifar-10-python.tar.gz"
    write_tar(archive, "cifar-10-batches-py", cifar10_files())
    full = archive.read_bytes()
    archive.write_bytes(full[: len(full) // 2])
    with pytest.raises(DataError) as err:
        load_dataset("cifar10")
    assert f"{archive} is truncated or corrupt" in one_line(err) and "intact copy of torchvision's" in str(err.value)

    files = cifar10_files()
    del files["test_batch"]
    write_tar(archive, "cifar-10-batches-py", files)
    with pytest.raises(DataError, match=f"{archive} lacks cifar-10-batches-py/test_batch; replace it"):
        load_dataset("cifar10")

    files = cifar10_files()
    files["data_batch_4"] = files["data_batch_4"][:500]
    write_tar(archive, "cifar-10-batches-py", files)
    with pytest.raises(DataError, match=f"{archive} member cifar-10-batches-py/data_batch_4 is not a readable"):
        load_dataset("cifar10")

    files = cifar10_files()
    batch = unpickle(files["data_batch_1"])
    files["data_batch_1"] = pickle.dumps({**batch, b"labels": batch[b"labels"][:-1]}, protocol=2)
    write_tar(archive, "cifar-10-batches-py", files)
    with pytest.raises(DataError, match=f"data_batch_1 holds {PER_BATCH} images but {PER_BATCH - 1} 'labels'"):
        load_dataset("cifar10")

    files = cifar10_files()
    files["data_batch_1"] = pickle.dumps({**batch, b"data": batch[b"data"][:, :100]}, protocol=2)
    write_tar(archive, "cifar-10-batches-py", files)
    with pytest.raises(DataError, match=r"'data' is uint8 \(4, 100\), expected uint8 \(N, 3072\)"):
        load_dataset("cifar10")


def test_cifar100_fine_by_default_coarse_on_request(root):
    files = cifar100_files()
    write_tar(root / "cifar-100-python.tar.gz", "cifar-100-python", files)
    train, test = load_dataset("cifar100")
    batch = unpickle(files["train"])
    assert train.x.shape == (PER_BATCH, 3, 32, 32) and train.y.tolist() == batch[b"fine_labels"]
    assert test.y.tolist() == unpickle(files["test"])[b"fine_labels"]
    back = denormalise(train.x, cifar.MEAN100, cifar.STD100).round().to(torch.uint8)
    assert torch.equal(back, torch.from_numpy(batch[b"data"]).view(-1, 3, 32, 32))
    coarse, _ = load_dataset({"name": "cifar100", "labels": "coarse"})
    assert coarse.y.tolist() == batch[b"coarse_labels"] and torch.equal(coarse.x, train.x)
    with pytest.raises(ConfigError, match=r"scenario.dataset.labels='medium' is invalid; valid choices: fine, coarse"):
        load_dataset({"name": "cifar100", "labels": "medium"})


def test_cifar100_folder_and_missing(root):
    with pytest.raises(DataNotFoundError) as err:
        load_dataset("cifar100")
    msg = one_line(err)
    assert all(str(root / "cifar-100-python" / f) in msg for f in ("train", "test", "meta"))
    assert str(root / "cifar-100-python.tar.gz") in msg and "never downloads" in msg
    write_folder(root / "cifar-100-python", cifar100_files(protocol=4))
    load_dataset.cache_clear()
    train, _ = load_dataset("cifar100")
    assert len(train) == PER_BATCH


# ---------------------------------------------------------------------------------------------------- MNIST


def idx_bytes(arr: np.ndarray) -> bytes:
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    return ((0x08 << 8) | arr.ndim).to_bytes(4, "big") + np.asarray(arr.shape, dtype=">i4").tobytes() + arr.tobytes()


def write_mnist(raw: Path, gz: set[str]) -> dict[str, np.ndarray]:
    """The four IDX files (20 train / 10 test samples); the names in ``gz`` as torchvision's ``*.gz``."""
    rng = np.random.default_rng(0)
    raw.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for split, n in (("train", 20), ("test", 10)):
        img, lab = MNIST_FILES[split]
        arrays[img], arrays[lab] = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), np.arange(n) % 10
        for name in (img, lab):
            data = idx_bytes(arrays[name])
            (raw / (f"{name}.gz" if name in gz else name)).write_bytes(gzip.compress(data) if name in gz else data)
    return arrays


@pytest.mark.parametrize("gz", ["all", "some"])
def test_mnist_reads_torchvisions_gzipped_files(root, gz):
    names = {n for pair in MNIST_FILES.values() for n in pair}
    arrays = write_mnist(root / "MNIST" / "raw", names if gz == "all" else {"train-images-idx3-ubyte"})
    train, test = load_dataset("mnist")
    assert train.x.shape == (20, 1, 28, 28) and train.x.dtype == torch.float32 and len(test) == 10
    assert torch.equal(train.x[:, 0] * 255, torch.from_numpy(arrays["train-images-idx3-ubyte"]).float())
    assert train.y.tolist() == arrays["train-labels-idx1-ubyte"].tolist()
    assert torch.equal(test.x[:, 0] * 255, torch.from_numpy(arrays["t10k-images-idx3-ubyte"]).float())


def test_broken_or_missing_gzipped_mnist(root):
    raw = root / "MNIST" / "raw"
    arrays = write_mnist(raw, {"t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"})
    path = raw / "t10k-images-idx3-ubyte.gz"
    full = path.read_bytes()
    path.write_bytes(full[: len(full) // 2])
    with pytest.raises(DataError) as err:
        load_dataset("mnist")
    assert f"{path} is not a readable gzip file" in one_line(err) and "intact copy" in str(err.value)
    path.write_bytes(gzip.compress(idx_bytes(arrays["t10k-images-idx3-ubyte"])[:-28]))  # one row short
    with pytest.raises(DataError, match=f"{path} is truncated \\(decompressed, 7828 bytes, .* needs 7856\\)"):
        load_dataset("mnist")
    labels = raw / "t10k-labels-idx1-ubyte.gz"
    labels.write_bytes(gzip.compress(idx_bytes(np.arange(9))))
    path.write_bytes(gzip.compress(idx_bytes(arrays["t10k-images-idx3-ubyte"])))
    with pytest.raises(DataError, match=f"{path} holds 10 images but {labels} holds 9 labels"):
        load_dataset("mnist")
    labels.unlink()
    with pytest.raises(DataNotFoundError) as err:
        load_dataset("mnist")
    msg = one_line(err)
    assert f"files not found: {raw / 't10k-labels-idx1-ubyte'}. Set" in msg and "*-ubyte.gz" in msg


# ---------------------------------------------------------------------------------------------- ImageFolder

CLASSES = ("cat", "ant", "dog")  # labels by sorted name: ant 0, cat 1, dog 2


def write_tree(tree: Path, per_class=(3, 2), size=(8, 8), ext="png") -> dict[str, list[np.ndarray]]:
    """``tree/{train,test}/<class>/NN.<ext>`` random RGB images; returns the pixels per split in load order."""
    rng = np.random.default_rng(0)
    pixels: dict[str, list[np.ndarray]] = {}
    for split, n in zip(("train", "test"), per_class):
        pixels[split] = []
        for name in sorted(CLASSES):
            (tree / split / name).mkdir(parents=True)
            for i in range(n):
                arr = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
                Image.fromarray(arr).save(tree / split / name / f"{i:02d}.{ext}")
                pixels[split].append(arr)
    return pixels


@pytest.fixture
def decodes(monkeypatch) -> list[Path]:
    """Every file ``formats.decode_image`` decodes, in order."""
    seen: list[Path] = []
    original = formats.decode_image

    def counted(path, *args):
        seen.append(path)
        return original(path, *args)

    monkeypatch.setattr(formats, "decode_image", counted)
    return seen


def test_imagefolder_is_lazy_and_exact(root, tmp_path, decodes):
    pixels = write_tree(tmp_path / "tree")
    train, test = load_dataset({"name": "imagefolder", "path": str(tmp_path / "tree")})
    assert isinstance(train.x, LazyRows) and train.x.shape == (9, 3, 8, 8) and train.x.dtype == torch.float32
    assert len(decodes) == 2  # one probe per split (its shape), nothing else
    assert train.y.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2] and test.y.tolist() == [0, 0, 1, 1, 2, 2]
    first = train.x[0]
    assert len(decodes) == 3 and decodes[-1] == tmp_path / "tree" / "train" / "ant" / "00.png"
    assert torch.equal(first * 255, torch.from_numpy(pixels["train"][0]).permute(2, 0, 1).float())
    batch = test.x[torch.tensor([5, 2])]
    assert len(decodes) == 5 and decodes[-2:] == [tmp_path / "tree/test/dog/01.png", tmp_path / "tree/test/cat/00.png"]
    assert torch.equal(batch[1] * 255, torch.from_numpy(pixels["test"][2]).permute(2, 0, 1).float())
    part = lazy_subset(train, train.y == 2)  # a split of the stream selects rows, decoding nothing but a probe
    assert isinstance(part.x, LazyRows) and len(part) == 3 and len(decodes) == 6
    assert torch.equal(part.x[:], train.x[6:]) and len(decodes) == 6 + 3 + 3
    n = len(decodes)
    for _ in TensorLoader(part, batch_size=2, seed=0):  # an epoch decodes each row once, batch by batch
        pass
    assert len(decodes) == n + 3


def test_imagefolder_options(root, tmp_path):
    tree = root / "trees" / "small"  # a relative path is read from the data root
    pixels = write_tree(tree, size=(6, 10), ext="jpg")
    train, _ = load_dataset({"name": "imagefolder", "path": "trees/small", "image_size": 4, "mode": "L"})
    assert train.x.shape == (9, 1, 4, 4) and train.x[:].shape == (9, 1, 4, 4)
    expected = np.asarray(Image.fromarray(pixels["train"][0]).convert("L").resize((4, 4), Image.Resampling.BILINEAR))
    assert torch.allclose(train.x[0, 0] * 255, torch.from_numpy(expected).float(), atol=60)  # JPEG is lossy
    with pytest.raises(ConfigError, match=r"scenario.dataset.mode='CMYK' is invalid; valid choices: L, RGB"):
        load_dataset({"name": "imagefolder", "path": "trees/small", "mode": "CMYK"})
    with pytest.raises(ConfigError, match=r"scenario.dataset.image_size='big' is invalid; expected an integer"):
        load_dataset({"name": "imagefolder", "path": "trees/small", "image_size": "big"})
    with pytest.raises(ConfigError, match=r"scenario.dataset.size=4 is invalid; valid choices: image_size, mode, path"):
        load_dataset({"name": "imagefolder", "path": "trees/small", "size": 4})
    with pytest.raises(ConfigError, match=r"scenario.dataset.path=None is invalid.*needs it"):
        load_dataset("imagefolder")
    with pytest.raises(ConfigError, match=r"scenario.dataset.path='x' is invalid. data set 'digits' takes no options"):
        load_dataset({"name": "digits", "path": "x"})


def test_imagefolder_errors_name_the_path(root, tmp_path):
    tree = tmp_path / "tree"
    with pytest.raises(DataNotFoundError) as err:
        load_dataset({"name": "imagefolder", "path": str(tree)})
    assert f"ImageFolder tree {tree} not found (expected {tree}/train/<class>/<image>" in one_line(err)
    assert "set scenario.dataset.path" in str(err.value) and "never downloads" in str(err.value)
    write_tree(tree, size=(8, 8))
    spec = {"name": "imagefolder", "path": str(tree)}
    (tree / "test" / "bee").mkdir()
    with pytest.raises(DataError, match=r"test has class folders \['ant', 'bee', 'cat', 'dog'\], but train/ has"):
        load_dataset(spec)
    (tree / "train" / "bee").mkdir()
    with pytest.raises(DataError, match=f"{tree / 'train' / 'bee'} holds no images"):
        load_dataset(spec)
    (tree / "train" / "bee").rmdir()
    (tree / "test" / "bee").rmdir()
    bad = tree / "train" / "dog" / "01.png"
    bad.write_bytes(b"not a png")
    train, _ = load_dataset(spec)  # lazy: the file is only read when its row is
    with pytest.raises(DataError) as err:
        train.x[7]
    assert f"{bad} is not a readable image" in one_line(err)
    Image.fromarray(np.zeros((5, 8, 3), dtype=np.uint8)).save(bad)
    with pytest.raises(DataError, match=f"{bad} is 8x5, the first image read 8x8; set scenario.dataset.image_size"):
        train.x[6:]


def test_split_scenario_trains_on_an_imagefolder_tree(root, tmp_path, decodes):
    from clframe.config import compose
    from clframe.runner import run

    write_tree(tmp_path / "tree", per_class=(4, 2))
    spec = f"scenario.dataset={{name: imagefolder, path: '{tmp_path / 'tree'}'}}"
    stream = SCENARIOS.build({"name": "split", "dataset": {"name": "imagefolder", "path": str(tmp_path / "tree")},
                              "n_experiences": 3}, seed=0)  # fmt: skip
    assert stream.name == "split_imagefolder" and stream.input_shape == (3, 8, 8)
    assert all(isinstance(e.train.x, LazyRows) and isinstance(e.test.x, LazyRows) for e in stream.experiences)
    overrides = ["scenario=split_digits", spec, "scenario.n_experiences=3", "strategy=naive", "trainer.max_epochs=1"]
    overrides += ["logger=none", "progress_bar=none", "plots=false", f"run_dir={tmp_path / 'run'}"]
    before = len(decodes)
    res = run(compose(overrides))
    assert res["status"] == "complete" and res["scenario"] == "split_imagefolder"
    assert np.asarray(res["accuracy_matrix"]).shape == (3, 3)
    assert len(decodes) - before >= 12  # the 12 training images (1 epoch) were decoded from disk at least once


def test_joint_reads_an_imagefolder_stream_batch_by_batch(root, tmp_path, monkeypatch):
    """Joint's union of every experience so far stays on disk: its loader decodes at most a batch of images at
    a time, and yields the batches of a loader over the same union held in memory."""
    from clframe.registry import BACKBONES, STRATEGIES
    from clframe.stream import TensorData

    write_tree(tmp_path / "tree", per_class=(10, 2))  # 3 classes x 10 training images
    stream = SCENARIOS.build({"name": "split", "dataset": {"name": "imagefolder", "path": str(tmp_path / "tree")},
                              "n_experiences": 3}, seed=0)  # fmt: skip
    rows: list[int] = []
    decode = formats.ImageFiles.__call__
    monkeypatch.setattr(formats.ImageFiles, "__call__", lambda self, r: rows.append(len(r)) or decode(self, r))
    backbone = BACKBONES.build({"name": "mlp", "hidden": [8]}, input_shape=stream.input_shape)
    joint = STRATEGIES.build({"name": "joint", "batch_size": 4}, backbone=backbone, n_classes=3, setting="class")
    for exp in stream.experiences[:2]:
        joint.after_experience(exp)
    loader = joint.train_dataloader_for(stream.experiences[2])
    assert isinstance(loader.data.x, LazyRows) and len(loader.data) == 30
    rows.clear()
    batches = list(loader)
    assert max(rows) <= 4 and sum(rows) == 30  # one epoch: every image decoded once, four at most at a time
    union = TensorData.concat([e.train for e in stream.experiences])  # the reference: everything decoded
    reference = TensorLoader(union, 4, seed=joint.seed)
    for got, want in zip(batches, reference, strict=True):
        assert torch.equal(got["ids"], want["ids"]) and torch.equal(got["x"], want["x"])


def test_a_store_of_disk_backed_data_forgets_and_checkpoints_rows_not_images(root, tmp_path, monkeypatch):
    """Joint's store over an ImageFolder stream: a forget request selects rows without decoding them, the
    checkpoint holds row indices (no image tensor), and loading it reads the same images from the data set the
    run loads; a checkpoint naming files the run does not load, or rows they do not have, is refused."""
    import gc

    from clframe.errors import CheckpointError
    from clframe.registry import BACKBONES, STRATEGIES

    write_tree(tmp_path / "tree", per_class=(10, 2), size=(16, 16))
    spec = {"name": "split", "dataset": {"name": "imagefolder", "path": str(tmp_path / "tree")}, "n_experiences": 3}

    def joint_over(stream):
        backbone = BACKBONES.build({"name": "mlp", "hidden": [8]}, input_shape=stream.input_shape)
        return STRATEGIES.build({"name": "joint", "batch_size": 4}, backbone=backbone, n_classes=3, setting="class")

    stream = SCENARIOS.build(spec, seed=0)
    joint = joint_over(stream)
    for exp in stream.experiences[:2]:
        joint.after_experience(exp)
    rows: list[int] = []
    decode = formats.ImageFiles.__call__
    monkeypatch.setattr(formats.ImageFiles, "__call__", lambda self, r: rows.append(len(r)) or decode(self, r))
    first = stream.experiences[0].train
    forgotten = first.ids[:4]
    assert joint.past.forget(forgotten) == 4 and len(joint.past) == 16
    assert sum(rows) <= 2  # at most one probe row per part: nothing is decoded to be forgotten
    kept = joint.past.data()
    assert isinstance(kept.x, LazyRows) and not torch.isin(kept.ids, forgotten).any()

    buf = io.BytesIO()
    torch.save(joint.checkpoint_state(), buf)
    pixels = 16 * 3 * 16 * 16 * 4  # the 16 images as float32
    assert buf.tell() < pixels / 4  # indices and labels, not images
    saved = torch.load(io.BytesIO(buf.getvalue()), weights_only=True)
    parts = saved["stores"]["past"]["parts"]
    assert all(p["x"] is None and p["x_ref"]["rows"].dtype == torch.long for p in parts)

    load_dataset.cache_clear()  # as a resumed run: the data set loaded anew
    restored = joint_over(SCENARIOS.build(spec, seed=0))
    restored.restore_checkpoint_state(torch.load(io.BytesIO(buf.getvalue()), weights_only=True))
    again = restored.past.data()
    assert isinstance(again.x, LazyRows) and torch.equal(again.ids, kept.ids) and torch.equal(again.y, kept.y)
    assert torch.equal(again.x[:], kept.x[:])

    bad = torch.load(io.BytesIO(buf.getvalue()), weights_only=True)
    bad["stores"]["past"]["parts"][0]["x_ref"]["rows"][0] = 10**6
    with pytest.raises(CheckpointError, match="outside its 36 rows"):
        joint_over(stream).restore_checkpoint_state(bad)
    del stream, joint, restored, first, kept, again
    load_dataset.cache_clear()
    gc.collect()
    Image.fromarray(np.zeros((16, 16, 3), dtype=np.uint8)).save(tmp_path / "tree/train/ant/99.png")
    changed = joint_over(SCENARIOS.build(spec, seed=0))
    with pytest.raises(CheckpointError, match=r"data set 'ImageFiles:\w+' is not loaded by this run"):
        changed.restore_checkpoint_state(torch.load(io.BytesIO(buf.getvalue()), weights_only=True))


def test_a_killed_joint_run_over_an_imagefolder_tree_resumes_exactly(root, tmp_path, make_cfg, monkeypatch):
    """Joint + a forget request over a disk-backed stream: killed after the forget request and resumed, it gives
    the uninterrupted run's matrix; its checkpoint keeps the past data as row indices."""
    from clframe.runner import run
    from clframe.strategies.joint import Joint
    from tests.conftest import crash_at

    write_tree(tmp_path / "tree", per_class=(10, 2))
    overrides = [
        "scenario=unlearning_digits",
        f"scenario.base.dataset={{name: imagefolder, path: '{tmp_path / 'tree'}'}}",
        "scenario.base.n_experiences=3",
        "scenario.requests=[{after: 1, type: class, classes: [0]}]",
        "strategy=joint",
        "strategy.batch_size=4",
        "unlearning=ga",
        "trainer.max_epochs=2",
        "backbone.hidden=[8]",
    ]
    full = run(make_cfg(*overrides))
    cfg = make_cfg(*overrides)
    ckpt = crash_at(monkeypatch, Joint, 3, cfg)  # events: learn 0, learn 1, forget class 0, learn 2
    parts = ckpt["extra"]["stores"]["past"]["parts"]
    assert len(parts) == 1 and parts[0]["x"] is None and "x_ref" in parts[0]  # one class per experience:
    assert parts[0]["y"].tolist() == [1] * 10  # class 0's part is forgotten whole, class 1's kept as row indices
    resumed = run(make_cfg(f"resume={cfg.run_dir}"))
    assert resumed["status"] == "complete" and resumed["accuracy_matrix"] == full["accuracy_matrix"]
