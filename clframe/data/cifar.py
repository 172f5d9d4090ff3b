"""CIFAR-10 (and CIFAR-100) as normalised tensors: the original pickles when present, else the JPEG mirror.

Sources of ``cifar10``, first found under ``$CLFRAME_DATA_ROOT`` wins (:func:`cifar10_source` says which was read):

1. torchvision's extracted ``cifar-10-batches-py/`` or its ``cifar-10-python.tar.gz`` — the original pixels
   (lossless), read in memory by the safe unpickler of :mod:`clframe.data.formats`, nothing cached;
2. ``cifar10-jpg.tar.gz``, the JPEG-re-encoded (lossy) mirror, through the pipeline below.

``cifar100`` reads torchvision's ``cifar-100-python/`` or ``cifar-100-python.tar.gz`` alike (fine labels by
default, ``dataset: {name: cifar100, labels: coarse}`` for the 20 superclasses), standardised with the
CIFAR-100 mean / std. Both have the same labels as torchvision (its meta file's class order; for CIFAR-10
that is also the JPEG mirror's sorted folder order).

JPEG pipeline (each step runs once per machine, later runs load the tensor file in ~1 s):

1. the archive is extracted into ``<cache>/cifar10-jpg/{train,test}/<class>/NNNN.jpg`` —
   into a temporary folder that is renamed into place, so a crashed or concurrent run never
   leaves a half-extracted folder (two runs racing: one rename wins, the other discards its copy);
2. the JPEGs are decoded once into ``<cache>/cifar10-jpg/cifar10_uint8.pt`` (uint8 NCHW,
   written atomically; class index = sorted folder names, as ``torchvision.datasets.ImageFolder``).

Broken files raise :class:`~clframe.errors.DataError` naming the file and the fix: a truncated
archive, a corrupt JPEG or a missing split (delete the extracted folder to re-extract); a
corrupt tensor file is deleted and rebuilt automatically, after a warning.

``<cache>`` is the data root when it is writable; otherwise (CI copies ``shared/`` read-only)
``$CLFRAME_CACHE_DIR`` or ``~/.cache/clframe``, and a warning says so.

In memory, ``x`` is **normalised float32** (train 614 MB, test 123 MB), so the runner's
evaluation, replay buffers, Fisher estimates and evaluators use ``x`` as it is; only the
training augmentation (:func:`augment`: random crop with 4-pixel padding + horizontal flip,
batched tensor ops on the batch's device) is applied per batch via ``Experience.transform``.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import pickle
import shutil
import tarfile
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from clframe.data import data_root, data_sources, record_source, register_dataset, require_files
from clframe.data import describe_error as _reason
from clframe.data.formats import CIFAR10_PY, CIFAR100_PY, find_pickled, missing_pickled, read_pickled
from clframe.errors import ConfigError, DataError
from clframe.io import atomic_torch_save
from clframe.stream import TensorData

log = logging.getLogger("clframe")
ARCHIVE = "cifar10-jpg.tar.gz"
FOLDER = "cifar10-jpg"
TENSORS = "cifar10_uint8.pt"
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)
MEAN100 = (0.5071, 0.4865, 0.4409)  # CIFAR-100 train set statistics (as Mammoth / most CL code bases)
STD100 = (0.2673, 0.2564, 0.2762)
_DONE = ".complete"


def cache_dir(archive_dir: Path | None = None) -> Path:
    """Where the extracted folder and tensor file live: the folder of the archive (default: the data root)
    if writable, else ``$CLFRAME_CACHE_DIR`` or ``~/.cache/clframe`` (in a subfolder named after the archive's
    folder when that is not the data root, so two archives never share a cache)."""
    root = data_root() if archive_dir is None else Path(archive_dir)
    if root.is_dir() and _writable(root):
        return root
    fallback = Path(os.environ.get("CLFRAME_CACHE_DIR") or "~/.cache/clframe").expanduser()
    if root != data_root():
        fallback = fallback / hashlib.sha1(str(root.resolve()).encode()).hexdigest()[:12]
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
    """Extract ``archive`` to ``dest`` atomically (temp folder + rename); no-op if already done.
    A truncated or corrupt archive raises :class:`DataError` and leaves nothing behind."""
    if (dest / _DONE).is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.tmp"))
    try:
        try:
            with tarfile.open(archive) as tar:
                tar.extractall(tmp, filter="data")
        except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as err:
            raise DataError(
                f"{archive} is truncated or corrupt ({_reason(err)}); "
                "replace it with an intact copy (clframe never downloads data)"
            ) from err
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


def _class_folders(folder: Path, fix: str) -> list[str]:
    if not folder.is_dir():
        raise DataError(f"{folder} is missing (expected {folder.name}/<class>/NNNN.jpg); {fix}")
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
    if not classes:
        raise DataError(f"{folder} has no class folders (expected {folder.name}/<class>/NNNN.jpg); {fix}")
    return classes


def decode_folder(folder: Path) -> dict[str, Tensor]:
    """Decode ``folder/{train,test}/<class>/*.jpg`` into uint8 NCHW tensors (ImageFolder class order).

    A missing split, mismatched class folders, an empty class or an undecodable / odd-sized JPEG
    raises :class:`DataError` naming the path and the fix (delete the extracted folder)."""
    import numpy as np
    from PIL import Image

    fix = f"delete {folder} so the next run extracts it again from {ARCHIVE}"
    out: dict[str, Tensor] = {}
    classes = _class_folders(folder / "train", fix)
    shape = None
    for split in ("train", "test"):
        found = _class_folders(folder / split, fix)
        if found != classes:
            raise DataError(f"{folder / split} has class folders {found}, but train/ has {classes}; {fix}")
        images, labels = [], []
        for label, name in enumerate(classes):
            paths = sorted((folder / split / name).glob("*.jpg"))
            if not paths:
                raise DataError(f"{folder / split / name} holds no .jpg images; {fix}")
            for path in paths:
                try:
                    with Image.open(path) as im:
                        arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
                except (OSError, SyntaxError, ValueError) as err:  # PIL: unidentified / truncated image
                    raise DataError(f"{path} is not a readable JPEG ({_reason(err)}); {fix}") from err
                if shape is None:
                    shape = arr.shape
                elif arr.shape != shape:
                    raise DataError(f"{path} is {arr.shape[1]}x{arr.shape[0]}, the others {shape[1]}x{shape[0]}; {fix}")
                images.append(arr)
                labels.append(label)
        out[f"{split}_x"] = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
        out[f"{split}_y"] = torch.tensor(labels, dtype=torch.long)
    out["classes"] = classes
    return out


def prepare(root: Path | None = None, archive: Path | None = None) -> tuple[Path, dict[str, float]]:
    """Make sure the extracted folder and the tensor file of ``archive`` (default: the data root's) exist in
    ``root`` (default: :func:`cache_dir`); returns the tensor file's path and the seconds spent
    ``{"extract_s", "decode_s"}`` (0 when cached)."""
    archive = data_root() / ARCHIVE if archive is None else Path(archive)
    require_files(archive, dataset="CIFAR-10")
    folder = (root or cache_dir(archive.parent)) / FOLDER
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


def normalize(x: Tensor, mean: tuple[float, ...] = MEAN, std: tuple[float, ...] = STD) -> Tensor:
    """uint8 (N, 3, H, W) → float32, per-channel standardised (by default with the CIFAR-10 mean / std)."""
    mean = torch.tensor(mean, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(std, device=x.device).view(1, 3, 1, 1)
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
    flip = torch.rand(n, 1, device=x.device, dtype=torch.float32) < 0.5
    cols = torch.arange(w, device=x.device).expand(n, w)
    cols = torch.where(flip, w - 1 - cols, cols) + dx
    rows = torch.arange(h, device=x.device) + dy
    idx_n = torch.arange(n, device=x.device).view(n, 1, 1, 1)
    idx_c = torch.arange(c, device=x.device).view(1, c, 1, 1)
    return padded[idx_n, idx_c, rows.view(n, 1, h, 1), cols.view(n, 1, 1, w)]


def read_tensors(path: Path) -> dict:
    """Load and check the tensor cache written by :func:`prepare`; an unreadable or inconsistent
    file raises :class:`DataError` ("delete it to rebuild")."""
    fix = f"delete {path} to rebuild it from the JPEGs"
    try:
        data = torch.load(path, weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError) as err:
        raise DataError(f"{path} is not a readable tensor cache ({_reason(err)}); {fix}") from err
    keys = {"train_x", "train_y", "test_x", "test_y", "classes"}
    if not isinstance(data, dict) or not keys <= set(data):
        found = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise DataError(f"{path} lacks the entries {sorted(keys)} (found {found}); {fix}")
    for split in ("train", "test"):
        x, y = data[f"{split}_x"], data[f"{split}_y"]
        ok = isinstance(x, Tensor) and isinstance(y, Tensor) and x.dtype == torch.uint8 and x.dim() == 4
        if not ok or x.shape[1] != 3 or len(x) != len(y) or len(x) == 0:
            raise DataError(f"{path}: {split}_x / {split}_y are not matching uint8 (N, 3, H, W) / (N,) tensors; {fix}")
    return data


def load_tensors(root: Path | None = None, archive: Path | None = None) -> dict:
    """The decoded uint8 tensors (:func:`prepare` + :func:`read_tensors`) of ``archive`` (default: the data
    root's). A corrupt cache file is rebuilt once, after a warning; if the rebuilt one is unreadable too, the
    :class:`DataError` stands."""
    path, _ = prepare(root, archive)
    try:
        return read_tensors(path)
    except DataError as err:
        log.warning("%s; doing that now", err)
        try:
            path.unlink(missing_ok=True)
        except OSError:
            raise err from None
        path, _ = prepare(root, archive)
        return read_tensors(path)


def cifar10_source() -> dict[str, Any] | None:
    """What the last :func:`load_cifar10` of this process read: ``{"format": "pickle" | "jpeg", "path": ...,
    "lossless": bool}`` (the pickles are the original pixels, the JPEG mirror is re-encoded); ``None`` before."""
    return data_sources().get("cifar10")


def _tensors(data: dict, mean: tuple[float, ...], std: tuple[float, ...]) -> tuple[TensorData, TensorData]:
    return (
        TensorData.from_tensors(normalize(data["train_x"], mean, std), data["train_y"]),
        TensorData.from_tensors(normalize(data["test_x"], mean, std), data["test_y"]),
    )


@register_dataset("cifar10")
def load_cifar10() -> tuple[TensorData, TensorData]:
    """CIFAR-10 (50,000 train / 10,000 test, 10 classes) as normalised float tensors (N, 3, 32, 32): from
    torchvision's pickles if the data root has them (lossless), else from the JPEG archive."""
    root = data_root()
    pickled = find_pickled(CIFAR10_PY, root)
    if pickled is not None:
        data, source = read_pickled(CIFAR10_PY, pickled), {"format": "pickle", "path": str(pickled), "lossless": True}
    elif (root / ARCHIVE).is_file():
        data, source = load_tensors(), {"format": "jpeg", "path": str(root / ARCHIVE), "lossless": False}
    else:
        hint = "The pickles (the original pixels) are read when present, else the JPEG mirror (re-encoded, lossy)."
        raise missing_pickled(CIFAR10_PY, root, root / ARCHIVE, hint=hint)
    log.info("CIFAR-10 read from %s (%s)", source["path"], "lossless pickles" if source["lossless"] else "JPEG mirror")
    record_source("cifar10", source)
    return _tensors(data, MEAN, STD)


@register_dataset("cifar100")
def load_cifar100(labels: str = "fine") -> tuple[TensorData, TensorData]:
    """CIFAR-100 (50,000 train / 10,000 test) from torchvision's ``cifar-100-python/`` or
    ``cifar-100-python.tar.gz``: ``labels`` ``fine`` (100 classes) or ``coarse`` (20 superclasses),
    inputs (N, 3, 32, 32) standardised with the CIFAR-100 mean / std."""
    if labels not in ("fine", "coarse"):
        raise ConfigError("scenario.dataset.labels", labels, ["fine", "coarse"])
    root = data_root()
    source = find_pickled(CIFAR100_PY, root)
    if source is None:
        raise missing_pickled(CIFAR100_PY, root)
    data = read_pickled(CIFAR100_PY, source, labels=f"{labels}_labels", names=f"{labels}_label_names")
    return _tensors(data, MEAN100, STD100)
