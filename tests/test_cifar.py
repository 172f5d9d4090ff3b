"""CIFAR-10 pipeline: atomic / concurrent extraction, read-only data root, tensor cache, augmentation."""

from __future__ import annotations

import io
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from clframe.data import cifar
from tests.conftest import require_data


def make_archive(root: Path, per_class: int = 3, classes=("cat", "airplane")) -> None:
    """A miniature ``cifar10-jpg.tar.gz`` with the real layout: {train,test}/<class>/NNNN.jpg."""
    rng = np.random.default_rng(0)
    with tarfile.open(root / cifar.ARCHIVE, "w:gz") as tar:
        for split in ("train", "test"):
            for name in classes:
                for i in range(per_class):
                    buf = io.BytesIO()
                    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buf, "JPEG")
                    info = tarfile.TarInfo(f"{split}/{name}/{i:04d}.jpg")
                    info.size = buf.tell()
                    buf.seek(0)
                    tar.addfile(info, buf)


@pytest.fixture
def tiny_root(tmp_path, monkeypatch):
    root = tmp_path / "data"
    root.mkdir()
    make_archive(root)
    monkeypatch.setenv("CLFRAME_DATA_ROOT", str(root))
    monkeypatch.setenv("CLFRAME_CACHE_DIR", str(tmp_path / "cache"))
    return root


def test_prepare_extracts_decodes_and_matches_imagefolder(tiny_root):
    from torchvision.datasets import ImageFolder

    path, times = cifar.prepare()
    assert path == tiny_root / "cifar10-jpg" / "cifar10_uint8.pt" and times["decode_s"] > 0
    data = torch.load(path, weights_only=True)
    assert data["train_x"].dtype == torch.uint8 and data["train_x"].shape == (6, 3, 32, 32)
    folder = ImageFolder(str(tiny_root / "cifar10-jpg" / "train"))
    assert data["classes"] == folder.classes == ["airplane", "cat"]
    for i, (img, label) in enumerate(folder):  # same order, labels and pixels as ImageFolder + PIL
        assert label == int(data["train_y"][i])
        assert torch.equal(torch.from_numpy(np.asarray(img)).permute(2, 0, 1), data["train_x"][i])
    assert cifar.prepare()[1] == {"extract_s": 0.0, "decode_s": 0.0}  # second call: cached
    assert not [p for p in (tiny_root).iterdir() if p.name.startswith(".")]  # no temp folders left


def test_concurrent_extraction_is_safe(tiny_root, tmp_path):
    dest = tmp_path / "race" / "cifar10-jpg"
    errors = []

    def work():
        try:
            cifar.extract(tiny_root / cifar.ARCHIVE, dest)
        except Exception as err:  # pragma: no cover - reported below
            errors.append(err)

    threads = [threading.Thread(target=work) for _ in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert not errors
    assert sorted(p.name for p in dest.parent.iterdir()) == ["cifar10-jpg"]  # losers cleaned up their copy
    assert len(list((dest / "train").rglob("*.jpg"))) == 6 and (dest / ".complete").is_file()


def test_read_only_data_root_falls_back_to_cache_dir(tiny_root, tmp_path):
    tiny_root.chmod(0o555)
    try:
        assert cifar.cache_dir() == tmp_path / "cache"
        path, _ = cifar.prepare()
        assert path.is_relative_to(tmp_path / "cache") and not (tiny_root / "cifar10-jpg").exists()
    finally:
        tiny_root.chmod(0o755)


def test_load_cifar10_is_normalised_float(tiny_root):
    train, test = cifar.load_cifar10()
    assert train.x.dtype == torch.float32 and len(train) == 6 and len(test) == 6
    raw = torch.load(cifar.prepare()[0], weights_only=True)["train_x"]
    back = train.x * torch.tensor(cifar.STD).view(1, 3, 1, 1) + torch.tensor(cifar.MEAN).view(1, 3, 1, 1)
    assert torch.allclose(back * 255, raw.float(), atol=1e-3)


def test_augment_is_a_padded_crop_or_its_flip():
    x = torch.randn(64, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(0)
    out = cifar.augment(x)
    assert out.shape == x.shape
    black = (-torch.tensor(cifar.MEAN) / torch.tensor(cifar.STD)).view(3, 1, 1)
    pad = black.expand(3, 40, 40).clone().repeat(64, 1, 1, 1)
    pad[:, :, 4:36, 4:36] = x
    for i in range(64):  # every output is one of the 81 windows of the padded image, possibly mirrored
        windows = [pad[i, :, r : r + 32, c : c + 32] for r in range(9) for c in range(9)]
        assert any(torch.equal(out[i], w) or torch.equal(out[i], w.flip(2)) for w in windows)
    assert not torch.equal(out, x)
    torch.manual_seed(0)
    assert torch.equal(cifar.augment(x), out)  # seeded → reproducible
    flips = cifar.augment(x, padding=0)
    n_flipped = sum(torch.equal(flips[i], x[i].flip(2)) for i in range(64))
    assert 15 < n_flipped < 49  # about half are mirrored


def test_seq_cifar10_stream_real_data():
    require_data("cifar10")
    from clframe.data import load_dataset
    from clframe.registry import SCENARIOS

    train, test = load_dataset("cifar10")
    assert train.x.shape == (50000, 3, 32, 32) and test.x.shape == (10000, 3, 32, 32)
    assert torch.bincount(train.y).tolist() == [5000] * 10
    assert abs(float(train.x.mean())) < 0.05 and abs(float(train.x.std()) - 1) < 0.05
    s = SCENARIOS.build({"name": "seq_cifar10", "train_per_class": 20, "test_per_class": 10, "setting": "task"}, seed=0)
    assert [e.classes for e in s.experiences] == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]
    assert [len(e.train) for e in s.experiences] == [40] * 5 and len(s.experiences[0].test) == 20
    assert s.experiences[4].task_id == 4 and s.experiences[0].transform is cifar.augment
