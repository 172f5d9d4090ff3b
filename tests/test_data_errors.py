"""Broken data files give a one-line error naming the file and the fix (copies in tmp_path; the shared data
root is never modified). A corrupt CIFAR-10 tensor cache is rebuilt after a warning."""

from __future__ import annotations

import gzip
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from clframe.data import DataNotFoundError, cifar, data_root, load_mnist
from clframe.errors import DataError
from clframe.registry import SCENARIOS
from tests.test_cifar import make_archive

REAL_ROOT = data_root()  # the shared data, read from only (resolved before any test changes CLFRAME_DATA_ROOT)
MNIST_RAW = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def skip_or_fail(what: str) -> None:
    if os.environ.get("CLFRAME_REQUIRE_DATA") == "1":
        pytest.fail(f"CLFRAME_REQUIRE_DATA=1 but {what} is missing under {REAL_ROOT}")
    pytest.skip(f"{what} not available under {REAL_ROOT}")


@pytest.fixture
def mnist_root(tmp_path, monkeypatch) -> Path:
    """A data root whose MNIST files are symlinks to the real ones; a test replaces one link by a broken
    copy (unlinking a symlink leaves its target alone)."""
    real = REAL_ROOT / "MNIST" / "raw"
    if not all((real / f).is_file() for f in MNIST_RAW):
        skip_or_fail("MNIST")
    raw = tmp_path / "data" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for f in MNIST_RAW:
        (raw / f).symlink_to(real / f)
    monkeypatch.setenv("CLFRAME_DATA_ROOT", str(tmp_path / "data"))
    return raw


def replace(link: Path, data: bytes) -> Path:
    link.unlink()
    link.write_bytes(data)
    return link


def one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert "\n" not in msg
    return msg


def test_intact_copy_loads(mnist_root):
    train, test = load_mnist()
    assert len(train) == 60000 and len(test) == 10000 and train.x.shape[1:] == (1, 28, 28)


def test_truncated_mnist_file(mnist_root):
    path = mnist_root / "t10k-images-idx3-ubyte"
    full = path.read_bytes()
    replace(path, full[: len(full) // 2])
    with pytest.raises(DataError) as err:
        load_mnist()
    msg = one_line(err)
    assert str(path) in msg and "truncated" in msg and f"needs {len(full)}" in msg and "intact copy" in msg


def test_truncated_inside_the_header(mnist_root):
    path = replace(mnist_root / "train-labels-idx1-ubyte", (mnist_root / "train-labels-idx1-ubyte").read_bytes()[:6])
    with pytest.raises(DataError, match=f"{path} is truncated .*inside the IDX header.*intact copy"):
        load_mnist()


def test_bad_idx_magic(mnist_root):
    path = mnist_root / "t10k-labels-idx1-ubyte"
    raw = path.read_bytes()
    replace(path, (2051).to_bytes(4, "big") + raw[4:])  # an images magic number in a labels file
    with pytest.raises(DataError) as err:
        load_mnist()
    msg = one_line(err)
    assert str(path) in msg and "bad IDX header (magic number 2051, expected 2049" in msg and "intact copy" in msg


def test_gzipped_idx_file_says_gunzip(mnist_root):
    path = mnist_root / "t10k-labels-idx1-ubyte"
    replace(path, gzip.compress(path.read_bytes()))
    with pytest.raises(DataError, match=f"{path} is gzip-compressed; gunzip it"):
        load_mnist()


def test_trailing_bytes(mnist_root):
    path = mnist_root / "t10k-labels-idx1-ubyte"
    replace(path, path.read_bytes() + b"\0" * 7)
    with pytest.raises(DataError, match=f"{path} has 7 bytes past the 10008 its header"):
        load_mnist()


def test_label_count_mismatch(mnist_root):
    images, labels = mnist_root / "t10k-images-idx3-ubyte", mnist_root / "t10k-labels-idx1-ubyte"
    raw = labels.read_bytes()
    replace(labels, raw[:4] + (9999).to_bytes(4, "big") + raw[8:-1])  # a consistent file of 9,999 labels
    with pytest.raises(DataError) as err:
        load_mnist()
    msg = one_line(err)
    assert f"{images} holds 10000 images but {labels} holds 9999 labels" in msg and "matching" in msg


def test_avalanche_adapter_checks_mnist_headers_first(mnist_root):
    """The adapter validates the IDX files before Avalanche / torchvision read them (their errors name no file)."""
    path = mnist_root / "train-images-idx3-ubyte"
    replace(path, path.read_bytes()[:1000])
    with pytest.raises(DataError, match=f"{path} is truncated"):
        SCENARIOS.build({"name": "avalanche", "benchmark": "SplitMNIST"}, seed=0)


def test_missing_mnist_file_is_data_not_found(mnist_root):
    (mnist_root / "train-labels-idx1-ubyte").unlink()
    with pytest.raises(DataNotFoundError, match="train-labels-idx1-ubyte.*never downloads"):
        load_mnist()


@pytest.fixture
def cifar_roots(tmp_path, monkeypatch) -> tuple[Path, Path]:
    root, cache = tmp_path / "data", tmp_path / "cache"
    root.mkdir()
    monkeypatch.setenv("CLFRAME_DATA_ROOT", str(root))
    monkeypatch.setenv("CLFRAME_CACHE_DIR", str(cache))
    return root, cache


def test_truncated_cifar_archive(cifar_roots):
    """The first 300 KB of the real archive: names the archive, leaves no half-extracted folder."""
    root, _ = cifar_roots
    original = REAL_ROOT / cifar.ARCHIVE
    if not original.is_file():
        skip_or_fail(cifar.ARCHIVE)
    with original.open("rb") as fh:
        (root / cifar.ARCHIVE).write_bytes(fh.read(300_000))
    with pytest.raises(DataError) as err:
        cifar.prepare()
    msg = one_line(err)
    assert f"{root / cifar.ARCHIVE} is truncated or corrupt" in msg and "intact copy" in msg
    assert sorted(p.name for p in root.iterdir()) == [cifar.ARCHIVE]  # nothing extracted, no temp folder


def test_not_a_tarball(cifar_roots):
    root, _ = cifar_roots
    (root / cifar.ARCHIVE).write_bytes(b"<html>404</html>")
    with pytest.raises(DataError, match=f"{root / cifar.ARCHIVE} is truncated or corrupt"):
        cifar.prepare()
    assert sorted(p.name for p in root.iterdir()) == [cifar.ARCHIVE]


def test_corrupt_jpeg_names_the_file_and_deleting_the_folder_fixes_it(cifar_roots):
    root, _ = cifar_roots
    make_archive(root)
    folder = root / cifar.FOLDER
    cifar.extract(root / cifar.ARCHIVE, folder)
    bad = folder / "train" / "cat" / "0001.jpg"
    bad.write_bytes(bad.read_bytes()[:100])  # truncated JPEG in the extracted folder
    with pytest.raises(DataError) as err:
        cifar.prepare()
    msg = one_line(err)
    assert f"{bad} is not a readable JPEG" in msg and f"delete {folder} so the next run extracts it again" in msg
    assert not (folder / cifar.TENSORS).exists()
    shutil.rmtree(folder)  # the fix the message gives
    path, _ = cifar.prepare()
    assert torch.load(path, weights_only=True)["train_x"].shape == (6, 3, 32, 32)


def test_not_an_image_and_odd_sized_image(cifar_roots):
    root, _ = cifar_roots
    make_archive(root)
    folder = cifar.extract(root / cifar.ARCHIVE, root / cifar.FOLDER)
    garbage = folder / "test" / "airplane" / "0002.jpg"
    garbage.write_bytes(b"GIF89a not really")
    with pytest.raises(DataError, match=f"{garbage} is not a readable JPEG"):
        cifar.decode_folder(folder)
    from PIL import Image

    Image.fromarray(np.zeros((31, 32, 3), dtype=np.uint8)).save(garbage, "JPEG")
    with pytest.raises(DataError, match=f"{garbage} is 32x31, the others 32x32"):
        cifar.decode_folder(folder)


def test_missing_split_or_class_folder(cifar_roots):
    root, _ = cifar_roots
    make_archive(root)
    folder = cifar.extract(root / cifar.ARCHIVE, root / cifar.FOLDER)
    shutil.rmtree(folder / "test" / "cat")
    with pytest.raises(DataError, match=r"test has class folders \['airplane'\], but train/ has \['airplane', 'cat'\]"):
        cifar.decode_folder(folder)
    shutil.rmtree(folder / "test")
    with pytest.raises(DataError, match=f"{folder / 'test'} is missing .*delete {folder}"):
        cifar.decode_folder(folder)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "wrong_content"])
def test_corrupt_tensor_cache_is_rebuilt_after_a_warning(cifar_roots, caplog, damage):
    root, _ = cifar_roots
    make_archive(root)
    path, _ = cifar.prepare()
    good = torch.load(path, weights_only=True)
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[:2000])
    elif damage == "garbage":
        path.write_bytes(b"\0" * 64)
    else:
        torch.save({"train_x": torch.zeros(3)}, path)
    with pytest.raises(DataError) as err:
        cifar.read_tensors(path)
    assert f"{path}" in one_line(err) and f"delete {path} to rebuild it" in str(err.value)
    with caplog.at_level(logging.WARNING, logger="clframe"):
        train, test = cifar.load_cifar10()
    assert any(str(path) in r.getMessage() and "doing that now" in r.getMessage() for r in caplog.records)
    assert len(train) == 6 and len(test) == 6
    rebuilt = torch.load(path, weights_only=True)
    assert torch.equal(rebuilt["train_x"], good["train_x"]) and rebuilt["classes"] == good["classes"]


def test_default_data_root_does_not_depend_on_the_current_folder(tmp_path, monkeypatch):
    from clframe.data import REPO, data_root, data_root_candidates

    monkeypatch.delenv("CLFRAME_DATA_ROOT", raising=False)
    here = data_root()
    monkeypatch.chdir(tmp_path)  # another folder: same answer (it used to be ../shared/data from the cwd)
    assert data_root() == here
    assert data_root_candidates()[0] == REPO.parent / "shared" / "data"
    assert (REPO / "clframe" / "__init__.py").is_file()
