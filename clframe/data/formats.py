"""Standard on-disk formats: torchvision's pickled CIFAR files, read safely, and ImageFolder trees, read lazily.

**CIFAR pickles** (``cifar-10-python.tar.gz`` / its folder ``cifar-10-batches-py/``, ``cifar-100-python.tar.gz`` /
``cifar-100-python/``): the archive's members are read in memory (nothing is extracted or cached; it takes a
few seconds). Unpickling an untrusted file can run arbitrary code, so :func:`safe_unpickle` resolves no global
at all: the few names a CIFAR batch refers to (numpy's array / dtype reconstructors, ``_codecs.encode`` of
protocol-2 bytes) are answered by inert stand-ins of this module that rebuild plain ``numpy`` arrays from the
raw bytes (simple numeric dtypes only); any other global — ``os.system``, ``builtins.eval``, a class — is
refused with a :class:`DataError` before anything is called. Batches must be dicts holding ``data``
(uint8, (N, 3072), channel-major rows of 32x32 images) and the labels key; meta files the label names.

**ImageFolder trees** (``<path>/train/<class>/*.png``, ``<path>/test/<class>/*.jpg``, as
``torchvision.datasets.ImageFolder``; class index = sorted folder names of ``train/``, hidden folders and files
such as ``.ipynb_checkpoints`` or ``._x.png`` skipped, which ImageFolder would not): only the file list is
built at load time; the inputs are a :class:`~clframe.stream.LazyRows` that decodes the rows indexed (a batch)
from disk, so a tree larger than memory streams. A file that cannot be decoded is reported when first read.
"""

from __future__ import annotations

import io
import pickle
import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from clframe.data import data_root, describe_error, not_found, register_dataset, require_files
from clframe.errors import ConfigError, DataError, DataNotFoundError
from clframe.stream import LazyRows, TensorData, register_row_source

# ----------------------------------------------------------------------------------------------------------------
# safe unpickling of CIFAR batches

#: the plain dtypes an array in a CIFAR pickle may have (numpy ``dtype.str`` without the byte order)
_DTYPES = {"u1", "i1", "b1", "u2", "i2", "u4", "i4", "u8", "i8", "f2", "f4", "f8"}


class _Dtype:
    """Stand-in for ``numpy.dtype`` during unpickling: records the type code and byte order."""

    def __init__(self, code: Any, align: Any = False, copy: Any = True):
        code = code.decode("latin1") if isinstance(code, bytes) else code
        if not isinstance(code, str) or code not in _DTYPES:
            raise pickle.UnpicklingError(f"array dtype {code!r} is not a plain numeric type")
        self.code, self.order = code, "|"

    def __setstate__(self, state: Any) -> None:
        order = state[1] if isinstance(state, tuple) and len(state) > 1 else "|"
        self.order = order.decode("latin1") if isinstance(order, bytes) else order

    def real(self) -> np.dtype:
        return np.dtype((">" if self.order == ">" else "<") + self.code)


class _NdarrayType:
    """Stand-in for the class ``numpy.ndarray`` (only ever passed to :func:`_reconstruct`)."""


class _Array:
    """Stand-in for an array being unpickled (``_reconstruct`` + ``__setstate__``); :func:`_real` makes it real."""

    def __init__(self) -> None:
        self.state: Any = None

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def real(self) -> np.ndarray:
        if not (isinstance(self.state, tuple) and len(self.state) == 5):
            raise pickle.UnpicklingError("an array without its (version, shape, dtype, order, data) state")
        _, shape, dtype, fortran, raw = self.state
        return _from_bytes(raw, dtype, shape, "F" if fortran else "C")


def _from_bytes(raw: Any, dtype: Any, shape: Any, order: Any) -> np.ndarray:
    if not isinstance(dtype, _Dtype) or not isinstance(raw, (bytes, bytearray)):
        raise pickle.UnpicklingError("an array whose data are not raw bytes of a plain dtype")
    if not (isinstance(shape, tuple) and all(isinstance(d, int) and d >= 0 for d in shape)):
        raise pickle.UnpicklingError(f"an array with the invalid shape {shape!r}")
    dt = dtype.real()
    if len(raw) != int(np.prod(shape)) * dt.itemsize:
        raise pickle.UnpicklingError(f"an array of shape {shape} holding {len(raw)} bytes")
    order = order.decode("latin1") if isinstance(order, bytes) else order
    return np.frombuffer(raw, dtype=dt).reshape(shape, order="F" if order == "F" else "C")  # read-only view


def _reconstruct(cls: Any, shape: Any, typecode: Any) -> _Array:
    if cls is not _NdarrayType:
        raise pickle.UnpicklingError("numpy's _reconstruct called with something other than ndarray")
    return _Array()


def _frombuffer(buf: Any, dtype: Any, shape: Any, order: Any) -> np.ndarray:  # numpy's protocol-5 path
    return _from_bytes(bytes(buf) if isinstance(buf, memoryview) else buf, dtype, shape, order)


def _encode(text: Any, encoding: Any = "latin1") -> bytes:  # how protocol 2 stores ``bytes`` (py3 pickles)
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("_codecs.encode used for anything but latin-1 bytes")
    return text.encode("latin1")


_STAND_INS = {
    **{(f"numpy{core}.multiarray", "_reconstruct"): _reconstruct for core in (".core", "._core")},
    **{(f"numpy{core}.numeric", "_frombuffer"): _frombuffer for core in (".core", "._core")},
    ("numpy", "ndarray"): _NdarrayType,
    ("numpy", "dtype"): _Dtype,
    ("_codecs", "encode"): _encode,
}


class _RefusedGlobal(pickle.UnpicklingError):
    def __init__(self, module: str, name: str):
        super().__init__(f"{module}.{name}")
        self.ref = f"{module}.{name}"


class SafeUnpickler(pickle.Unpickler):
    """Resolves no global: the names a CIFAR pickle needs map to the inert stand-ins above, any other raises."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _STAND_INS[(module, name)]
        except KeyError:
            raise _RefusedGlobal(module, name) from None


def _real(obj: Any) -> Any:
    """The unpickled object with stand-ins replaced by numpy arrays (dict / list / tuple containers walked)."""
    if isinstance(obj, _Array):
        return obj.real()
    if isinstance(obj, (_Dtype, type)):
        raise pickle.UnpicklingError(f"a bare {type(obj).__name__} where data were expected")
    if isinstance(obj, dict):
        return {k: _real(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_real(v) for v in obj)
    return obj


def safe_unpickle(raw: bytes, where: str, fix: str) -> Any:
    """Unpickle ``raw`` (a file's bytes, named ``where`` in errors) with :class:`SafeUnpickler`,
    ``encoding="bytes"`` (CIFAR's Python 2 strings stay bytes): plain dicts, lists, bytes, numbers and arrays.
    A global other than numpy's array reconstructors, or a damaged pickle, raises :class:`DataError`."""
    try:
        return _real(SafeUnpickler(io.BytesIO(raw), encoding="bytes").load())
    except _RefusedGlobal as err:
        raise DataError(
            f"{where} refers to {err.ref}, which a CIFAR pickle never needs: refused without unpickling it "
            f"(a pickle can run arbitrary code); {fix}"
        ) from None
    except Exception as err:  # UnpicklingError, EOFError, ValueError, ... of a damaged or foreign file
        raise DataError(f"{where} is not a readable CIFAR pickle ({describe_error(err)}); {fix}") from err


# ----------------------------------------------------------------------------------------------------------------
# torchvision's CIFAR-10 / CIFAR-100 python versions


@dataclass(frozen=True)
class PickledCifar:
    """Where torchvision keeps a pickled CIFAR version under its root, and the files it holds."""

    name: str  # in messages
    folder: str
    archive: str
    train: tuple[str, ...]
    test: tuple[str, ...]
    meta: str

    @property
    def files(self) -> tuple[str, ...]:
        return (*self.train, *self.test, self.meta)


CIFAR10_PY = PickledCifar(
    "CIFAR-10",
    "cifar-10-batches-py",
    "cifar-10-python.tar.gz",
    tuple(f"data_batch_{i}" for i in range(1, 6)),
    ("test_batch",),
    "batches.meta",
)
CIFAR100_PY = PickledCifar("CIFAR-100", "cifar-100-python", "cifar-100-python.tar.gz", ("train",), ("test",), "meta")


def find_pickled(spec: PickledCifar, root: Path | None = None) -> Path | None:
    """The extracted folder if it exists under ``root`` (the data root), else the archive, else ``None``."""
    root = data_root() if root is None else root
    return next((p for p in (root / spec.folder, root / spec.archive) if p.exists()), None)


def expected_listing(spec: PickledCifar, root: Path) -> str:
    """``root/folder/a, ..., root/folder/z (torchvision's extracted folder) or root/archive`` for messages."""
    files = ", ".join(str(root / spec.folder / f) for f in spec.files)
    return f"{files} (torchvision's extracted folder) or {root / spec.archive}"


def _archive_fix(spec: PickledCifar) -> str:
    return f"replace it with an intact copy of torchvision's {spec.archive} (clframe never downloads data)"


def iter_members(spec: PickledCifar, source: Path) -> Iterator[tuple[str, str, bytes]]:
    """``(file, where, bytes)`` of each of the spec's files, from the extracted folder or straight from the
    archive (in memory, one member at a time: nothing is written). Missing files: :class:`DataNotFoundError`;
    a damaged or incomplete archive: :class:`DataError`."""
    if source.is_dir():
        hint = f"(or remove {source} to read {spec.archive} or the data set's other sources)"
        require_files(*(source / f for f in spec.files), dataset=spec.name, hint=hint)
        for f in spec.files:
            yield f, str(source / f), (source / f).read_bytes()
        return
    wanted = {f"{spec.folder}/{f}": f for f in spec.files}
    seen: set[str] = set()
    try:
        with tarfile.open(source, "r:*") as tar:
            for member in tar:
                file = wanted.get(member.name.removeprefix("./"))
                if file is not None and member.isfile() and file not in seen:
                    seen.add(file)
                    yield file, f"{source} member {member.name}", tar.extractfile(member).read()
    except (tarfile.TarError, EOFError, OSError, zlib.error) as err:
        raise DataError(f"{source} is truncated or corrupt ({describe_error(err)}); {_archive_fix(spec)}") from err
    lacking = [m for m, f in wanted.items() if f not in seen]
    if lacking:
        raise DataError(f"{source} lacks {', '.join(lacking)}; {_archive_fix(spec)}")


def _field(batch: dict, key: str, where: str, fix: str) -> Any:
    if key not in batch:
        raise DataError(f"{where} has no {key!r} entry (found {sorted(batch)}); {fix}")
    return batch[key]


def _batch(obj: Any, where: str, label_key: str, n_classes: int, fix: str) -> tuple[np.ndarray, np.ndarray]:
    """A batch's images (uint8 (N, 3, 32, 32)) and labels, checked."""
    if not isinstance(obj, dict):
        raise DataError(f"{where} holds a {type(obj).__name__}, not a CIFAR batch dict; {fix}")
    batch = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}
    data, labels = _field(batch, "data", where, fix), _field(batch, label_key, where, fix)
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2 and data.shape[1] == 3072):
        found = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"{where}: 'data' is {found}, expected uint8 (N, 3072); {fix}")
    try:
        y = np.asarray(labels, dtype=np.int64).reshape(-1)
    except (TypeError, ValueError, OverflowError) as err:
        raise DataError(f"{where}: {label_key!r} is not a list of class indices; {fix}") from err
    if len(y) != len(data):
        raise DataError(f"{where} holds {len(data)} images but {len(y)} {label_key!r}; {fix}")
    if len(y) and not (0 <= y.min() and y.max() < n_classes):
        raise DataError(f"{where}: {label_key!r} outside 0..{n_classes - 1} (the meta file's classes); {fix}")
    return data.reshape(-1, 3, 32, 32), y


def read_pickled(spec: PickledCifar, source: Path, *, labels: str = "labels", names: str = "label_names") -> dict:
    """``{"train_x", "train_y", "test_x", "test_y", "classes"}`` (uint8 NCHW tensors, int64 labels, class names
    from the meta file's ``names`` entry) of a pickled CIFAR version at ``source`` (folder or archive)."""
    fix = _archive_fix(spec)
    parsed = {file: (where, safe_unpickle(raw, where, fix)) for file, where, raw in iter_members(spec, source)}
    where, meta = parsed[spec.meta]
    if not isinstance(meta, dict):
        raise DataError(f"{where} holds a {type(meta).__name__}, not the CIFAR meta dict; {fix}")
    meta = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in meta.items()}
    classes = _field(meta, names, where, fix)
    if not (isinstance(classes, list) and classes and all(isinstance(c, (bytes, str)) for c in classes)):
        raise DataError(f"{where}: {names!r} is not a list of class names; {fix}")
    out: dict[str, Any] = {"classes": [c.decode("utf-8", "replace") if isinstance(c, bytes) else c for c in classes]}
    for split, files in (("train", spec.train), ("test", spec.test)):
        parts = [_batch(parsed[f][1], parsed[f][0], labels, len(classes), fix) for f in files]
        out[f"{split}_x"] = torch.from_numpy(np.concatenate([x for x, _ in parts]))
        out[f"{split}_y"] = torch.from_numpy(np.concatenate([y for _, y in parts]))
    return out


def missing_pickled(spec: PickledCifar, root: Path, *alternatives: Path, hint: str = "") -> DataNotFoundError:
    """The :class:`DataNotFoundError` of a CIFAR version none of whose sources is under ``root``."""
    listing = expected_listing(spec, root) + "".join(f" or {p}" for p in alternatives)
    return not_found(listing, dataset=spec.name, hint=hint)


# ----------------------------------------------------------------------------------------------------------------
# ImageFolder trees, decoded lazily

#: the extensions torchvision's ImageFolder accepts (case-insensitive)
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
MODES = {"RGB": 3, "L": 1}


def index_split(folder: Path, classes: list[str] | None = None) -> tuple[list[str], list[Path], list[int]]:
    """``(classes, files, labels)`` of ``folder/<class>/*.<image>`` (sorted class folders, sorted files).
    ``classes``: the ones the folder must have (the train split's). A missing folder, no class folders,
    other class folders than ``classes`` or a class without images raise :class:`DataError`."""
    layout = f"expected {folder.name}/<class>/<image> with one folder per class"
    if not folder.is_dir():
        raise DataError(f"{folder} is missing ({layout})")
    found = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not found:
        raise DataError(f"{folder} has no class folders ({layout})")
    if classes is not None and found != classes:
        raise DataError(f"{folder} has class folders {found}, but train/ has {classes}; give both splits the same")
    files: list[Path] = []
    labels: list[int] = []
    for label, name in enumerate(found):
        entries = (folder / name).iterdir()
        images = sorted(p for p in entries if p.suffix.lower() in IMG_EXTENSIONS and p.is_file() and p.name[0] != ".")
        if not images:
            raise DataError(f"{folder / name} holds no images ({', '.join(IMG_EXTENSIONS)}); add some or remove it")
        files += images
        labels += [label] * len(images)
    return found, files, labels


def decode_image(path: Path, image_size: int | None, mode: str) -> np.ndarray:
    """One image file as uint8 (H, W, C) in ``mode``, resized (bilinear) to ``image_size`` squared if given."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im = im.convert(mode)
            if image_size is not None and im.size != (image_size, image_size):
                im = im.resize((image_size, image_size), Image.Resampling.BILINEAR)
            arr = np.asarray(im, dtype=np.uint8)
    except (OSError, SyntaxError, ValueError) as err:  # PIL: unidentified / truncated image
        raise DataError(f"{path} is not a readable image ({describe_error(err)}); replace or remove it") from err
    return arr[:, :, None] if arr.ndim == 2 else arr


class ImageFiles:
    """``LazyRows`` function of an ImageFolder tree: row indices -> float (n, C, H, W) images in [0, 1], each
    decoded from its file on every access (row by row, so a batch equals the same rows of the whole)."""

    __name__ = "decode_images"

    def __init__(self, files: list[Path], image_size: int | None, mode: str):
        self.files, self.image_size, self.mode = files, image_size, mode
        self.hw: tuple[int, int] | None = None  # of the first image decoded: every other must match

    def __len__(self) -> int:
        return len(self.files)

    def __call__(self, rows: Tensor) -> Tensor:
        arrays = []
        for i in rows.reshape(-1).tolist():
            arr = decode_image(self.files[i], self.image_size, self.mode)
            if self.hw is None:
                self.hw = arr.shape[:2]
            elif arr.shape[:2] != self.hw:
                (h, w), (eh, ew) = arr.shape[:2], self.hw
                raise DataError(
                    f"{self.files[i]} is {w}x{h}, the first image read {ew}x{eh}; set scenario.dataset.image_size "
                    "to resize every image to one size"
                )
            arrays.append(arr)
        if not arrays:
            h, w = self.hw or (self.image_size or 0, self.image_size or 0)
            return torch.zeros((0, MODES[self.mode], h, w))
        return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous().float().div_(255.0)


@register_dataset("imagefolder")
def load_imagefolder(
    path: str | Path, image_size: int | None = None, mode: str = "RGB"
) -> tuple[TensorData, TensorData]:
    """Any ImageFolder tree ``<path>/{train,test}/<class>/*.{jpg,png,...}`` (``path`` absolute, or relative to
    the data root): labels = index of the sorted class folder names, inputs float in [0, 1] shaped
    (N, C, H, W) (``mode`` ``RGB``: C = 3, ``L``: grayscale, C = 1), decoded from disk for the rows indexed
    (:class:`LazyRows`); ``image_size``: resize every image to that square size (else all must match)."""
    if mode not in MODES:
        raise ConfigError("scenario.dataset.mode", mode, sorted(MODES))
    if image_size is not None and image_size <= 0:
        raise ConfigError("scenario.dataset.image_size", image_size, "a positive number of pixels or null")
    root = Path(path).expanduser()
    root = root if root.is_absolute() else data_root() / root
    if not root.is_dir():
        raise DataNotFoundError(
            f"ImageFolder tree {root} not found (expected {root}/train/<class>/<image> and {root}/test/<class>/...); "
            f"set scenario.dataset.path to an existing folder (a relative path is read from the data root "
            f"{data_root()}). clframe never downloads data."
        )
    classes, train_files, train_y = index_split(root / "train")
    _, test_files, test_y = index_split(root / "test", classes)
    files = train_files + test_files
    decode = ImageFiles(files, image_size, mode)  # one decoder: one image size for both
    register_row_source(decode, [str(f) for f in files], image_size, mode)  # stores checkpoint rows, not images
    n = len(train_files)
    rows = torch.arange(n + len(test_files))
    train = TensorData.from_tensors(LazyRows(rows[:n], decode), torch.tensor(train_y))
    test = TensorData.from_tensors(LazyRows(rows[n:], decode), torch.tensor(test_y))
    return train, test
