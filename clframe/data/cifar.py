"""CIFAR-10 from ``$CLFRAME_DATA_ROOT/cifar10-jpg.tar.gz``: extract once, decode once, train from tensors.

Pipeline (each step runs once per machine, later runs load the tensor file in ~1 s):

1. the archive is extracted into ``<cache>/cifar10-jpg/{train,test}/<class>/NNNN.jpg`` —
   into a temporary folder that is renamed into place, so a crashed or concurrent run never
   leaves a half-extracted folder (two runs racing: one rename wins, the other discards its copy);
2. the JPEGs are decoded once into ``<cache>/cifar10-jpg/cifar10_uint8.pt`` (uint8 NCHW,
   written atomically; class index = sorted folder names, as ``torchvision.datasets.ImageFolder``).

``<cache>`` is the data root when it is writable; otherwise (CI copies ``shared/`` read-only)
``$CLFRAME_CACHE_DIR`` or ``~/.cache/clframe``, and a warning says so.

In memory, ``x`` is **normalised float32** (train 614 MB, test 123 MB), so the runner's
evaluation, replay buffers, Fisher estimates and evaluators use ``x`` as it is; only the
training augmentation (:func:`augment`: random crop with 4-pixel padding + horizontal flip,
batched tensor ops on the batch's device) is applied per batch via ``Experience.transform``.
"""

from __future__ import annotations

import logging
import os
import shutil
import tarfile
import tempfile
import time
from pathlib import Path

import torch
from torch import Tensor

from clframe.data import data_root, register_dataset, require_files
from clframe.io import atomic_torch_save
from clframe.stream import TensorData

log = logging.getLogger("clframe")
ARCHIVE = "cifar10-jpg.tar.gz"
FOLDER = "cifar10-jpg"
TENSORS = "cifar10_uint8.pt"
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)
_DONE = ".complete"


def cache_dir() -> Path:
    """Where the extracted folder and tensor file live: the data root if writable, else
    ``$CLFRAME_CACHE_DIR`` or ``~/.cache/clframe``."""
    root = data_root()
    if root.is_dir() and _writable(root):
        return root
    fallback = Path(os.environ.get("CLFRAME_CACHE_DIR") or "~/.cache/clframe").expanduser()
    log.warning("data root %s is read-only; caching CIFAR-10 in %s (set CLFRAME_CACHE_DIR to change)", root, fallback)
    return fallback


def _writable(folder: Path) -> bool:
    """Write bits set *and* a probe file can be created (root ignores missing write bits, but a
    folder shipped read-only, like CI's copy of ``shared/``, is meant to stay untouched)."""
    if not folder.stat().st_mode & 0o222:
        return False
    try:
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False


def extract(archive: Path, dest: Path) -> Path:
    """Extract ``archive`` to ``dest`` atomically (temp folder + rename); no-op if already done."""
    if (dest / _DONE).is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.tmp"))
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(tmp, filter="data")
        (tmp / _DONE).write_text("ok\n")
        tmp.chmod(0o755)  # mkdtemp makes it private; the cache is shared by every user of the data root
        try:
            os.rename(tmp, dest)
        except OSError:  # another run renamed its copy first (or a stale incomplete folder is in the way)
            if not (dest / _DONE).is_file():
                shutil.rmtree(dest, ignore_errors=True)
                os.rename(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def decode_folder(folder: Path) -> dict[str, Tensor]:
    """Decode ``folder/{train,test}/<class>/*.jpg`` into uint8 NCHW tensors (ImageFolder class order)."""
    import numpy as np
    from PIL import Image

    out: dict[str, Tensor] = {}
    classes = sorted(p.name for p in (folder / "train").iterdir() if p.is_dir())
    for split in ("train", "test"):
        images, labels = [], []
        for label, name in enumerate(classes):
            for path in sorted((folder / split / name).glob("*.jpg")):
                with Image.open(path) as im:
                    images.append(np.asarray(im.convert("RGB"), dtype=np.uint8))
                labels.append(label)
        out[f"{split}_x"] = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
        out[f"{split}_y"] = torch.tensor(labels, dtype=torch.long)
    out["classes"] = classes
    return out


def prepare(root: Path | None = None) -> tuple[Path, dict[str, float]]:
    """Make sure the extracted folder and the tensor file exist; returns the tensor file's path
    and the seconds spent ``{"extract_s", "decode_s"}`` (0 when cached)."""
    archive = data_root() / ARCHIVE
    require_files(archive, dataset="CIFAR-10")
    folder = (root or cache_dir()) / FOLDER
    times = {"extract_s": 0.0, "decode_s": 0.0}
    if not (folder / TENSORS).is_file():
        t0 = time.perf_counter()
        extract(archive, folder)
        times["extract_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        atomic_torch_save(decode_folder(folder), folder / TENSORS)
        (folder / TENSORS).chmod(0o644)
        times["decode_s"] = time.perf_counter() - t0
    return folder / TENSORS, times


def normalize(x: Tensor) -> Tensor:
    """uint8 (N, 3, H, W) → float32, per-channel standardised with the CIFAR-10 mean / std."""
    mean = torch.tensor(MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=x.device).view(1, 3, 1, 1)
    return (x.float().div_(255.0) - mean).div_(std)


def augment(x: Tensor, padding: int = 4) -> Tensor:
    """Random crop with zero (black) padding + random horizontal flip of a normalised batch.

    Vectorised gather on ``x``'s device; randomness from the global torch generator, which the
    runner seeds per experience (same seed → same augmentations)."""
    n, c, h, w = x.shape
    black = (-torch.tensor(MEAN, device=x.device) / torch.tensor(STD, device=x.device)).view(1, c, 1, 1)
    padded = black.expand(n, c, h + 2 * padding, w + 2 * padding).clone()
    padded[:, :, padding : padding + h, padding : padding + w] = x
    dy = torch.randint(0, 2 * padding + 1, (n, 1), device=x.device)
    dx = torch.randint(0, 2 * padding + 1, (n, 1), device=x.device)
    flip = torch.rand(n, 1, device=x.device) < 0.5
    cols = torch.arange(w, device=x.device).expand(n, w)
    cols = torch.where(flip, w - 1 - cols, cols) + dx
    rows = torch.arange(h, device=x.device) + dy
    idx_n = torch.arange(n, device=x.device).view(n, 1, 1, 1)
    idx_c = torch.arange(c, device=x.device).view(1, c, 1, 1)
    return padded[idx_n, idx_c, rows.view(n, 1, h, 1), cols.view(n, 1, 1, w)]


@register_dataset("cifar10")
def load_cifar10() -> tuple[TensorData, TensorData]:
    """CIFAR-10 (50,000 train / 10,000 test, 10 classes) as normalised float tensors (N, 3, 32, 32)."""
    path, _ = prepare()
    data = torch.load(path, weights_only=True)
    return (
        TensorData.from_tensors(normalize(data["train_x"]), data["train_y"]),
        TensorData.from_tensors(normalize(data["test_x"]), data["test_y"]),
    )
