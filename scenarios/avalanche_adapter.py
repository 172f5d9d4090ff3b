"""Any ``avalanche.benchmarks.classic`` benchmark as a clframe :class:`~clframe.stream.Stream`, offline.

``scenario=avalanche scenario.benchmark=SplitMNIST scenario.args.n_experiences=5`` calls
``avalanche.benchmarks.classic.SplitMNIST(n_experiences=5, seed=<seed>, dataset_root=<data root>)``
and turns each train / test experience into :class:`~clframe.stream.TensorData`. Avalanche's own default
transforms are replaced by none (``avalanche_transforms=false``): tensor items (MNIST, CLEAR features) stay as
they are and PIL images get ``ToTensor`` only (resized to ``image_size`` squared if set), so inputs are in
[0, 1] as our native loaders give them (``seq_cifar10`` standardises). An experience whose inputs would take
more than ``in_memory_mb`` MB as float32 is not materialised: its inputs are a
:class:`~clframe.stream.LazyRows` that reads the rows indexed (a batch) through Avalanche's data set.

Sample order: Avalanche groups an experience's samples class by class; ``order="original"`` (default) sorts
them back by their index in the original data set — the order of our native ``split`` scenario, so the same
seed and class order give the same batches and the same accuracy matrix. ``ids`` are those original indices
when Avalanche exposes them. A benchmark with one complete test set (CORe50, OpenLORIS) pairs it with every
training experience.

Never downloads. Every benchmark of :data:`BENCHMARKS` declares the files it reads under its dataset root
(:func:`required_paths`); they are checked before Avalanche runs (:class:`~clframe.errors.DataNotFoundError`
listing the missing ones, nothing created), and during the build Avalanche's download paths are closed:
its torchvision loaders are swapped for ``download=False`` ones, ``download`` arguments are set to false and
every :class:`DownloadableDataset` loads with ``download=False`` (files that Avalanche then finds incomplete
or corrupt raise :class:`~clframe.errors.DataError` naming the folder). Dataset roots: MNIST, Fashion-MNIST
and CIFAR are read in torchvision's layout from the data root itself; every other data set from the folder
Avalanche would use under ``~/.avalanche/data``, here under the data root (``<data root>/core50``, ...);
``scenario.args.dataset_root`` (absolute, or relative to the data root) overrides it. CIFAR-10 is read from
torchvision's ``cifar-10-batches-py/``, else from ``cifar-10-python.tar.gz`` or the data root's JPEG mirror
``cifar10-jpg.tar.gz`` through :mod:`clframe.data.cifar` (the lossy mirror is recorded in
``metrics.json["data_sources"]``). The ExML benchmarks (a stream of expert models, downloaded by Avalanche)
are refused.
"""

from __future__ import annotations

import importlib.util
import inspect
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from clframe.data import (
    MNIST_FILES,
    check_mnist_folder,
    data_root,
    describe_error,
    lazy_subset,
    not_found,
    record_source,
)
from clframe.data.cifar import ARCHIVE as JPEG_ARCHIVE
from clframe.data.cifar import load_tensors
from clframe.data.formats import CIFAR10_PY, CIFAR100_PY, PickledCifar, read_pickled
from clframe.errors import ConfigError, DataError
from clframe.registry import register_scenario
from clframe.stream import Experience, LazyRows, Stream, TensorData, register_row_source


@dataclass(frozen=True)
class Files:
    """One way of providing (part of) a data set: all these paths, relative to its dataset root (a trailing
    ``/`` marks a folder; an absolute path stays as it is)."""

    paths: tuple[str, ...]
    label: str = ""  # said after the paths in messages: "torchvision's extracted folder"

    def missing(self, root: Path) -> list[str]:
        return [_shown(root, p) for p in self.paths if not _exists(root, p)]


Need = tuple[Files, ...]  # alternatives, the first complete one is read


def _exists(root: Path, rel: str) -> bool:
    return (root / rel).is_dir() if rel.endswith("/") else (root / rel).is_file()


def _shown(root: Path, rel: str) -> str:
    return str(root / rel) + ("/" if rel.endswith("/") else "")


def _all(*paths: str, label: str = "") -> Callable[[Mapping[str, Any]], list[Need]]:
    return lambda args: [(Files(paths, label),)]


@dataclass(frozen=True)
class Source:
    """A data set that an Avalanche benchmark reads from one dataset root."""

    name: str  # as in messages: "MNIST"
    folder: str  # its default dataset root, relative to the data root ("": the data root itself; "{arg}": an argument)
    needs: Callable[[Mapping[str, Any]], list[Need]]  # the benchmark's arguments -> what must be there
    loader: str = ""  # the function of the benchmark's module that builds (train, test), swapped for a no-download one
    hint: str = ""  # appended to the files-not-found message


@dataclass(frozen=True)
class Benchmark:
    """How clframe builds one ``avalanche.benchmarks.classic`` benchmark offline."""

    sources: tuple[tuple[str, Source], ...]  # (its dataset-root keyword, the data set read from there)
    fixed: Mapping[str, Any] = field(default_factory=dict)  # arguments clframe sets (download=False)
    seed: bool = True  # pass the config seed (unless scenario.args.seed is given)
    requires: str = ""  # a Python package Avalanche imports for it


# ----------------------------------------------------------------------------------------------------------------
# the files of each data set, as Avalanche / torchvision read them

IDX = tuple(f for pair in MNIST_FILES.values() for f in pair)


def _pickled(spec: PickledCifar, *more: Files) -> Callable[[Mapping[str, Any]], list[Need]]:
    folder = Files(tuple(f"{spec.folder}/{f}" for f in spec.files), "torchvision's extracted folder")
    return lambda args: [(folder, Files((spec.archive,), "torchvision's archive"), *more)]


def _choice(args: Mapping[str, Any], key: str, valid: Mapping[str, Any] | list) -> Any:
    value = args.get(key)
    if value not in valid:
        raise ConfigError(f"scenario.args.{key}", value, sorted(valid))
    return valid[value] if isinstance(valid, Mapping) else value


CORE50_FILELISTS = {
    "ni": "batches_filelists/NI_inc",
    "nc": "batches_filelists/NC_inc",
    "nic": "batches_filelists/NIC_inc",
    "nicv2_79": "NIC_v2_79",
    "nicv2_196": "NIC_v2_196",
    "nicv2_391": "NIC_v2_391",
}


def _core50(args: Mapping[str, Any]) -> list[Need]:
    lists = _choice(args, "scenario", CORE50_FILELISTS)
    images = "core50_32x32/" if args.get("mini") else "core50_128x128/"
    paths = (images, "paths.pkl", "LUP.pkl", "labels.pkl", "labels2names.pkl", "batches_filelists/")
    return [(Files((*paths, f"{lists}/run{args.get('run', 0)}/")),)]


OPENLORIS_FILELISTS = {
    "clutter": "clutter",
    "illumination": "illumination",
    "occlusion": "occlusion",
    "pixel": "pixel",
    "mixture-iros": "iros",
}


def _openloris(args: Mapping[str, Any]) -> list[Need]:
    lists = _choice(args, "factor", OPENLORIS_FILELISTS)
    archives = (
        "train.zip",
        "validation.zip",
        "test.zip",
        "LUP.pkl",
        "Paths.pkl",
        "Labels.pkl",
        "batches_filelists.zip",
    )
    return [(Files((*archives, f"batches_filelists/domain/{lists}/")),)]


CLEAR_NAMES = ["clear10", "clear100", "clear100_cvpr2022", "clear10_neurips2021"]
CLEAR_SEEDS = [0, 1, 2, 3, 4]  # the train / test splits of its iid protocol


def _clear(args: Mapping[str, Any]) -> list[Need]:
    name = _choice(args, "data_name", CLEAR_NAMES)
    protocol = _choice(args, "evaluation_protocol", ["iid", "streaming"])
    if protocol == "streaming" and args.get("seed") is not None:
        raise ConfigError(
            "scenario.args.seed", args["seed"], [None], hint="CLEAR's streaming protocol has no split seed"
        )
    seed = _choice(args, "seed", CLEAR_SEEDS) if protocol == "iid" else None
    features = args.get("feature_type")
    if "_" in name:  # the 2021 / 2022 releases
        paths = ["class_names.txt", "training_folder/bucket_indices.json", "training_folder/filelists/"]
        if protocol == "iid":
            paths.append(f"training_folder/testset_ratio_0.3/split_{seed}/")
        if features:
            paths.append(f"training_folder/features/{features}/")
    else:
        paths = [f"{s}/{f}" for s in ("train", "test") for f in ("labeled_metadata.json", "class_names.txt")]
        if features:
            paths += [f"{s}/features/{features}/features.json" for s in ("train", "test")]
    return [(Files(tuple(paths)),)]


ENDLESS_FOLDERS = {
    "Classes": "IncrementalClasses_Classification",
    "Illumination": "IncrementalLighting_Classification",
    "Weather": "IncrementalWeather_Classification",
}


def _endless(args: Mapping[str, Any]) -> list[Need]:
    if args.get("semseg"):
        raise ConfigError("scenario.args.semseg", True, [False], hint="clframe streams are classification streams")
    return [(Files((ENDLESS_FOLDERS[_choice(args, "scenario", list(ENDLESS_FOLDERS))] + "/",)),)]


def _imagenet(args: Mapping[str, Any]) -> list[Need]:
    meta = str(args["meta_root"]) + "/" if args.get("meta_root") else ""
    return [
        (Files((f"{meta}meta.bin",)), Files((f"{meta}ILSVRC2012_devkit_t12.tar.gz",))),
        (Files(("train/",), "extracted"), Files(("ILSVRC2012_img_train.tar",))),
        (Files(("val/",), "extracted"), Files(("ILSVRC2012_img_val.tar",))),
    ]


MNIST = Source("MNIST", "", _all(*(f"MNIST/raw/{f}" for f in IDX)), "get_mnist_dataset")
FMNIST = Source("Fashion-MNIST", "", _all(*(f"FashionMNIST/raw/{f}" for f in IDX)), "get_fmnist_dataset")
CIFAR10 = Source(
    "CIFAR-10",
    "",
    _pickled(CIFAR10_PY, Files((JPEG_ARCHIVE,), "the JPEG mirror, re-encoded")),
    "get_cifar10_dataset",
)
CIFAR100 = Source("CIFAR-100", "", _pickled(CIFAR100_PY), "get_cifar100_dataset")
CUB = "CUB_200_2011/"
CUB200 = Source(
    "CUB-200-2011",
    "CUB_200_2011",
    _all(
        *(f"{CUB}{f}" for f in ("images.txt", "train_test_split.txt", "image_class_labels.txt", "bounding_boxes.txt")),
        f"{CUB}images/",
    ),  # fmt: skip
    hint="(CUB_200_2011.tgz extracted here)",
)
TINY = "tiny-imagenet-200/"
TINY_IMAGENET = Source(
    "Tiny ImageNet",
    "tinyimagenet",
    _all(f"{TINY}wnids.txt", f"{TINY}train/", f"{TINY}val/images/", f"{TINY}val/val_annotations.txt"),
    hint="(tiny-imagenet-200.zip extracted here)",
)
OMNI = "omniglot-py/omniglot-py/"  # Avalanche joins torchvision's folder name to the root torchvision joins it to
OMNIGLOT = Source(
    "Omniglot",
    "omniglot",
    _all(*(f"{OMNI}{s}{ext}" for s in ("images_background", "images_evaluation") for ext in (".zip", "/"))),
    "_get_omniglot_dataset",
    "(torchvision's two zip files, md5-checked, each next to its extracted folder)",
)
CORE50 = Source(
    "CORe50", "core50", _core50, hint="(Avalanche's CORe50 files: the image zip and the filelists extracted)"
)
OPENLORIS = Source("OpenLORIS", "openloris", _openloris, hint="(Avalanche's OpenLORIS files, the zips extracted too)")
STREAM51 = Source(
    "Stream-51", "stream51", _all("Stream-51_meta_train.json", "Stream-51_meta_test.json"), hint="(Stream-51.zip)"
)
CLEAR = Source("CLEAR", "{data_name}", _clear, hint="(the CLEAR release of scenario.args.data_name, extracted)")
ENDLESS = Source("Endless-CL-Sim", "endless-cl-sim", _endless, hint="(the scenario's zip extracted into its folder)")
INATURALIST = Source(
    "iNaturalist 2018",
    "inatuarlist2018",  # sic: Avalanche's default folder name
    _all("train2018.json", "val2018.json"),
    hint="(the 2018 annotation files next to the extracted images)",
)
IMAGENET = Source("ImageNet ILSVRC-2012", "imagenet", _imagenet, hint="(the folders or torchvision's archives)")

#: supported benchmark -> how it is built offline
BENCHMARKS: dict[str, Benchmark] = {
    "SplitMNIST": Benchmark((("dataset_root", MNIST),)),
    "PermutedMNIST": Benchmark((("dataset_root", MNIST),)),
    "RotatedMNIST": Benchmark((("dataset_root", MNIST),)),
    "SplitFMNIST": Benchmark((("dataset_root", FMNIST),)),
    "SplitCIFAR10": Benchmark((("dataset_root", CIFAR10),)),
    "SplitCIFAR100": Benchmark((("dataset_root", CIFAR100),)),
    "SplitCIFAR110": Benchmark((("dataset_root_cifar10", CIFAR10), ("dataset_root_cifar100", CIFAR100))),
    "SplitCUB200": Benchmark((("dataset_root", CUB200),)),
    "SplitTinyImageNet": Benchmark((("dataset_root", TINY_IMAGENET),)),
    "SplitOmniglot": Benchmark((("dataset_root", OMNIGLOT),)),
    "SplitImageNet": Benchmark((("dataset_root", IMAGENET),)),
    "SplitInaturalist": Benchmark((("dataset_root", INATURALIST),), {"download": False}, requires="pycocotools"),
    "CORe50": Benchmark((("dataset_root", CORE50),)),
    "OpenLORIS": Benchmark((("dataset_root", OPENLORIS),)),
    "CLStream51": Benchmark((("dataset_root", STREAM51),), {"download": False}),
    "CLEAR": Benchmark((("dataset_root", CLEAR),), seed=False),  # its streaming protocol takes no seed
    "EndlessCLSim": Benchmark((("dataset_root", ENDLESS),)),
}
#: classic benchmarks that are not data streams
REFUSED = {
    name: "an ex-model stream (expert models instead of data, downloaded by Avalanche), not a data stream"
    for name in ("ExMLMNIST", "ExMLCIFAR10", "ExMLCoRE50")
}
PATH_ARGS = ("dataset_root", "dataset_root_cifar10", "dataset_root_cifar100", "meta_root")
_BUILD_LOCK = threading.Lock()  # the loader swap is process-wide: one adapter build at a time


def _benchmark_fn(benchmark: str) -> Callable:
    import avalanche.benchmarks.classic as classic

    return getattr(classic, benchmark)


def _arguments(benchmark: str, given: Mapping[str, Any] | None) -> dict[str, Any]:
    """The benchmark's arguments: its defaults, overridden by ``given`` (path arguments resolved against the data
    root), with each dataset root filled in."""
    params = inspect.signature(_benchmark_fn(benchmark)).parameters
    args = {k: p.default for k, p in params.items() if p.default is not p.empty}
    for key, value in dict(given or {}).items():
        if key in PATH_ARGS and value is not None:
            path = Path(str(value)).expanduser()
            value = str(path if path.is_absolute() else data_root() / path)
        args[key] = value
    for key, src in BENCHMARKS[benchmark].sources:
        if args.get(key) is None:
            args[key] = str(data_root() / src.folder.format(**args))
    return args


def dataset_roots(benchmark: str, given: Mapping[str, Any] | None = None) -> dict[str, Path]:
    """Each dataset-root keyword of ``benchmark``: ``given`` (``scenario.args``) or its default under the data root."""
    args = _arguments(benchmark, given)
    return {key: Path(args[key]) for key, _ in BENCHMARKS[benchmark].sources}


def required_paths(benchmark: str, given: Mapping[str, Any] | None = None) -> list[tuple[Path, Need]]:
    """``(dataset root, alternatives)`` of everything ``benchmark`` reads, for the arguments ``given``."""
    args = _arguments(benchmark, given)
    return [(Path(args[key]), need) for key, src in BENCHMARKS[benchmark].sources for need in src.needs(args)]


def required_files(benchmark: str, given: Mapping[str, Any] | None = None) -> list[Path]:
    """The paths of the first way of providing each of ``benchmark``'s data (its files in torchvision's or
    Avalanche's layout; folders end the path)."""
    return [root / p for root, need in required_paths(benchmark, given) for p in need[0].paths]


def check_files(benchmark: str, given: Mapping[str, Any] | None = None) -> None:
    """Missing files raise one :class:`DataNotFoundError` listing them all (for a data set that can be provided
    in several ways, each way's missing files, "or"-separated); IDX files with a bad header or images / labels
    counts that disagree raise :class:`DataError`. Reads headers only, creates nothing, never downloads."""
    spec = BENCHMARKS[benchmark]
    missing = []
    for root, need in required_paths(benchmark, given):
        ways = [alt.missing(root) for alt in need]
        if all(ways):
            missing.append(" or ".join(", ".join(m) + (f" ({a.label})" if a.label else "") for m, a in zip(ways, need)))
    names = " + ".join(src.name for _, src in spec.sources)
    if missing:
        hint = " ".join(dict.fromkeys(src.hint for _, src in spec.sources if src.hint))
        raise not_found("; ".join(missing), dataset=f"Avalanche {benchmark} ({names})", hint=hint)
    roots = dataset_roots(benchmark, given)
    for key, src in spec.sources:
        if src.loader in ("get_mnist_dataset", "get_fmnist_dataset"):
            check_mnist_folder(roots[key] / ("MNIST" if src is MNIST else "FashionMNIST") / "raw", dataset=src.name)


# ----------------------------------------------------------------------------------------------------------------
# building without downloads


def _corrupt_files(cls: type, folder: Path) -> list[str]:
    """Files failing the md5 check torchvision makes (CIFAR), else every file it checks."""
    from torchvision.datasets.utils import check_integrity

    sums = [*getattr(cls, "train_list", []), *getattr(cls, "test_list", [])]
    if isinstance(getattr(cls, "meta", None), dict):
        sums.append((cls.meta["filename"], cls.meta["md5"]))
    bad = [str(folder / f) for f, md5 in sums if not check_integrity(str(folder / f), md5)]
    return bad or [str(folder / f) for f, _ in sums]


def _torchvision(cls: type, name: str, folder: Callable[[Path], Path]) -> Callable[[Any], tuple[Any, Any]]:
    """``loader(dataset_root) -> (train, test)`` of torchvision class ``cls`` with ``download=False``; a refusal
    (files corrupt, md5 mismatch) becomes a :class:`DataError` naming the files."""

    def load(dataset_root):
        if dataset_root is None:  # Avalanche would pick (and create) its own default folder
            raise DataError(f"{name}: no dataset_root given; clframe passes the data root explicitly")
        root = Path(dataset_root)
        try:
            return tuple(cls(str(root), train=train, download=False) for train in (True, False))
        except RuntimeError as err:
            raise DataError(
                f"{name} files are corrupt or incomplete: {', '.join(_corrupt_files(cls, folder(root)))} "
                f"(torchvision: {err}); replace them with intact copies (clframe never downloads data)"
            ) from err

    return load


class ArrayImages(torch.utils.data.Dataset):
    """A torchvision-CIFAR-like data set over uint8 (N, 3, H, W) images: items ``(PIL image, label)``."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, classes: list[str]):
        self.data = x.permute(0, 2, 3, 1).contiguous().numpy()
        self.targets, self.classes = [int(t) for t in y], classes

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int):
        from PIL import Image

        return Image.fromarray(self.data[i]), self.targets[i]


def _cifar(spec: PickledCifar, tv_class: str, name: str) -> Callable[[Any], tuple[Any, Any]]:
    """The first source of :func:`_pickled`'s alternatives that is there: torchvision's folder (its own class,
    md5-checked), else the archive or (CIFAR-10) the JPEG mirror through :mod:`clframe.data` (nothing extracted
    next to the archive; the JPEG mirror's decoded cache as :func:`clframe.data.cifar.load_tensors` keeps it)."""
    import torchvision.datasets

    by_folder = _torchvision(getattr(torchvision.datasets, tv_class), name, lambda root: root / spec.folder)

    def load(dataset_root):
        root = Path(dataset_root)
        if (root / spec.folder).is_dir():
            return by_folder(dataset_root)
        if (root / spec.archive).is_file():
            data, source = read_pickled(spec, root / spec.archive), {"format": "pickle", "lossless": True}
            path = root / spec.archive
        else:
            path = root / JPEG_ARCHIVE
            data, source = load_tensors(archive=path), {"format": "jpeg", "lossless": False}
        record_source(f"avalanche_{spec.folder}", {**source, "path": str(path)})
        return tuple(ArrayImages(data[f"{s}_x"], data[f"{s}_y"], data["classes"]) for s in ("train", "test"))

    return load


def _omniglot(dataset_root):
    from avalanche.benchmarks.datasets.omniglot import Omniglot

    try:
        return tuple(Omniglot(root=str(dataset_root), train=train, download=False) for train in (True, False))
    except RuntimeError as err:  # torchvision: a zip missing or failing its md5 check
        zips = ", ".join(
            str(Path(dataset_root) / OMNI / f"{s}.zip") for s in ("images_background", "images_evaluation")
        )
        raise DataError(
            f"Omniglot files are corrupt or incomplete: {zips} (torchvision: {err}); replace them with intact "
            "copies (clframe never downloads data)"
        ) from err


def offline_loader(src: Source) -> Callable[[Any], tuple[Any, Any]]:
    """The no-download replacement of ``src.loader``."""
    if src.loader == "get_mnist_dataset":
        from avalanche.benchmarks.datasets.external_datasets.mnist import TensorMNIST

        return _torchvision(TensorMNIST, src.name, lambda root: root / "MNIST" / "raw")
    if src.loader == "get_fmnist_dataset":
        from torchvision.datasets import FashionMNIST

        return _torchvision(FashionMNIST, src.name, lambda root: root / "FashionMNIST" / "raw")
    if src.loader == "get_cifar10_dataset":
        return _cifar(CIFAR10_PY, "CIFAR10", src.name)
    if src.loader == "get_cifar100_dataset":
        return _cifar(CIFAR100_PY, "CIFAR100", src.name)
    if src.loader == "_get_omniglot_dataset":
        return _omniglot
    raise ValueError(f"no offline loader for {src.loader!r}")


def _offline_load_dataset(original: Callable) -> Callable:
    """``DownloadableDataset._load_dataset`` with ``download=False``: Avalanche's verdict on files that are
    there but incomplete or corrupt becomes a :class:`DataError` naming the folder."""

    def load(self) -> None:
        self.download = False
        try:
            original(self)
        except Exception as err:
            raise DataError(
                f"{type(self).__name__}: the files under {self.root} are incomplete or corrupt (Avalanche: "
                f"{describe_error(err)}); replace them with an intact copy (clframe never downloads data)"
            ) from err

    return load


@contextmanager
def no_download(benchmark: str) -> Iterator[None]:
    """While building ``benchmark``: its module's torchvision loaders are the no-download ones and every
    Avalanche :class:`DownloadableDataset` loads with ``download=False``."""
    from avalanche.benchmarks.datasets.downloadable_dataset import DownloadableDataset

    module = sys.modules[_benchmark_fn(benchmark).__module__]
    sources = {src.loader: src for _, src in BENCHMARKS[benchmark].sources if src.loader}
    missing = [name for name in sources if not hasattr(module, name)]
    if missing:  # a changed Avalanche: refuse rather than let it download
        raise RuntimeError(f"{module.__name__} has no {', '.join(missing)}; cannot build {benchmark} without download")
    with _BUILD_LOCK:
        originals = {name: getattr(module, name) for name in sources}
        original_load = DownloadableDataset._load_dataset
        try:
            for name, src in sources.items():
                setattr(module, name, offline_loader(src))
            DownloadableDataset._load_dataset = _offline_load_dataset(original_load)
            yield
        finally:
            DownloadableDataset._load_dataset = original_load
            for name, fn in originals.items():
                setattr(module, name, fn)


# ----------------------------------------------------------------------------------------------------------------
# Avalanche experiences -> tensors


class ToInputs:
    """The ``avalanche_transforms=false`` transform: PIL images -> ``ToTensor`` ([0, 1]); tensors unchanged;
    both resized (bilinear) to ``image_size`` squared if set."""

    def __init__(self, image_size: int | None = None):
        self.image_size = image_size

    def __call__(self, item):
        from torchvision.transforms import functional as TF

        if not isinstance(item, torch.Tensor):
            item = TF.to_tensor(item)
        if self.image_size is not None and tuple(item.shape[-2:]) != (self.image_size,) * 2:
            item = TF.resize(item, [self.image_size, self.image_size], antialias=True)
        return item


def original_indices(dataset) -> torch.Tensor | None:
    """Indices into the original data set, from Avalanche's flat-data index list (``None`` if unavailable)."""
    idx = getattr(getattr(dataset, "_flat_data", None), "_indices", None)
    return torch.as_tensor(list(idx), dtype=torch.long) if idx is not None and len(idx) == len(dataset) else None


def _sizes_differ(err: Exception) -> DataError:
    return DataError(
        f"the benchmark's images differ in size ({describe_error(err)}); set scenario.image_size to resize every "
        "image to one square size"
    )


class DatasetRows:
    """``LazyRows`` function over an Avalanche data set: row indices -> its inputs, read item by item."""

    __name__ = "avalanche_items"

    def __init__(self, dataset):
        self.dataset = dataset
        self.shape: tuple[int, ...] | None = None  # of the first item read: every other must match

    def __len__(self) -> int:
        return len(self.dataset)

    def __call__(self, rows: torch.Tensor) -> torch.Tensor:
        items = [torch.as_tensor(self.dataset[int(i)][0]).float() for i in rows.reshape(-1).tolist()]
        if not items:
            return torch.zeros((0, *(self.shape or ())))
        self.shape = self.shape or tuple(items[0].shape)
        if any(tuple(x.shape) != self.shape for x in items):
            raise _sizes_differ(ValueError(f"shapes {sorted({tuple(x.shape) for x in items})}"))
        return torch.stack(items)


def to_tensors(
    dataset, task: int, order: str, *, in_memory_mb: float = 2048, batch_size: int = 4096, identity: Any = None
) -> TensorData:
    """An Avalanche dataset as :class:`TensorData` (x, y, original ids, task): materialised when its inputs take
    at most ``in_memory_mb`` MB as float32, else read per indexed batch (:class:`DatasetRows`; with ``identity``,
    what names this data set — benchmark, arguments, split — sample stores checkpoint its rows, not its images)."""
    n = len(dataset)
    ids = original_indices(dataset)
    ids = torch.arange(n) if ids is None else ids
    first = torch.as_tensor(dataset[0][0]) if n else torch.zeros(0)
    if n and first.numel() * 4 * n > in_memory_mb * 2**20:
        y = torch.as_tensor([int(t) for t in dataset.targets], dtype=torch.long)
        rows = DatasetRows(dataset)
        if identity is not None:
            register_row_source(rows, identity)
        data = TensorData(LazyRows(torch.arange(n), rows), y, ids, torch.full((n,), task))
    else:
        xs, ys = [], []
        try:
            for batch in torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False):
                xs.append(batch[0])
                ys.append(torch.as_tensor(batch[1]))
        except RuntimeError as err:
            if "stack expects each tensor to be equal size" in str(err):
                raise _sizes_differ(err) from err
            raise
        x, y = torch.cat(xs).float(), torch.cat(ys).long()
        data = TensorData(x, y, ids, torch.full((len(y),), task, dtype=torch.long))
    return lazy_subset(data, ids.argsort()) if order == "original" else data


def _check_benchmark(benchmark: str) -> None:
    if benchmark in BENCHMARKS:
        return
    import avalanche.benchmarks.classic as classic

    if benchmark in REFUSED:
        hint = f"{benchmark} is {REFUSED[benchmark]}; clframe streams carry data"
    else:
        others = sorted(n for n in dir(classic) if n[0].isupper() and callable(getattr(classic, n)))
        others = [n for n in others if n not in BENCHMARKS and n not in REFUSED]
        hint = "the avalanche.benchmarks.classic benchmarks" + (
            f" (not {', '.join(others)}: not benchmarks)" * bool(others)
        )
    raise ConfigError("scenario.benchmark", benchmark, sorted(BENCHMARKS), hint=hint + " (clframe never downloads)")


def _check_args(benchmark: str, given: Mapping[str, Any]) -> None:
    spec = BENCHMARKS[benchmark]
    params = inspect.signature(_benchmark_fn(benchmark)).parameters
    owned = {"train_transform", "eval_transform"} | set(spec.fixed)
    for key, value in given.items():
        if key not in params:
            raise ConfigError(
                f"scenario.args.{key}", value, sorted(set(params) - owned), hint=f"not an argument of {benchmark}"
            )
        if key in spec.fixed and value != spec.fixed[key]:
            raise ConfigError(f"scenario.args.{key}", value, [spec.fixed[key]], hint="clframe never downloads data")
        if key in ("train_transform", "eval_transform"):
            raise ConfigError(f"scenario.args.{key}", value, hint="set scenario.avalanche_transforms / image_size")


@register_scenario("avalanche")
def avalanche(
    *,
    benchmark: str = "SplitMNIST",
    args: Mapping[str, Any] | None = None,
    setting: str = "class",
    order: str = "original",
    avalanche_transforms: bool = False,
    image_size: int | None = None,
    in_memory_mb: float = 2048,
    seed: int = 0,
) -> Stream:
    """Any ``avalanche.benchmarks.classic`` benchmark that reads local files, by name, offline (``args``: its
    keyword arguments, ``null`` ones dropped; ``seed``, ``dataset_root`` and ``n_experiences=5`` where required
    are filled in). ``setting``: class | task | domain. ``avalanche_transforms=false``: no transform for tensor
    items, ``ToTensor`` for PIL images ([0, 1], not standardised), resized to ``image_size`` squared if set.
    Experiences above ``in_memory_mb`` MB (float32 inputs) are read per batch from Avalanche's data set."""
    _check_benchmark(benchmark)
    if setting not in ("class", "task", "domain"):
        raise ConfigError("scenario.setting", setting, ["class", "task", "domain"])
    if order not in ("original", "avalanche"):
        raise ConfigError("scenario.order", order, ["original", "avalanche"])
    if image_size is not None and (not isinstance(image_size, int) or image_size <= 0):
        raise ConfigError("scenario.image_size", image_size, "a positive number of pixels or null")
    if avalanche_transforms and image_size is not None:
        raise ConfigError("scenario.image_size", image_size, hint="only with scenario.avalanche_transforms=false")
    given = {k: v for k, v in dict(args or {}).items() if v is not None}
    _check_args(benchmark, given)
    spec, fn = BENCHMARKS[benchmark], _benchmark_fn(benchmark)
    params = inspect.signature(fn).parameters
    if "n_experiences" in params and params["n_experiences"].default is inspect.Parameter.empty:
        given.setdefault("n_experiences", 5)
    if spec.seed and "seed" in params:
        given.setdefault("seed", seed)
    check_files(benchmark, given)  # before Avalanche runs: it would download and create folders
    if spec.requires and importlib.util.find_spec(spec.requires) is None:
        raise ConfigError(
            "scenario.benchmark", benchmark, hint=f"Avalanche needs the package {spec.requires} for it (pip install it)"
        )
    roots = {k: str(v) for k, v in dataset_roots(benchmark, given).items()}
    kwargs = {**given, **roots, **spec.fixed}
    if not avalanche_transforms:
        kwargs.update(train_transform=ToInputs(image_size), eval_transform=ToInputs(image_size))
    with no_download(benchmark):
        bench = fn(**kwargs)
    trains, tests = list(bench.train_stream), list(bench.test_stream)
    if len(tests) == 1 < len(trains):  # one complete test set (CORe50, OpenLORIS): every experience's column
        tests = tests * len(trains)
    exps, converted = [], {}
    identity = [benchmark, given, roots, avalanche_transforms, image_size]  # + experience: a lazy source's name
    for i, (tr, te) in enumerate(zip(trains, tests, strict=True)):
        task = int(getattr(tr, "task_label", 0)) if setting == "task" else 0
        train = to_tensors(tr.dataset, task, order, in_memory_mb=in_memory_mb, identity=[*identity, i, "train"])
        if (id(te), task) not in converted:  # a shared test set is converted once
            converted[id(te), task] = to_tensors(te.dataset, task, order, in_memory_mb=in_memory_mb)
        listed = getattr(tr, "classes_in_this_experience", None)
        classes = sorted(int(c) for c in listed) if listed is not None else train.classes()
        exps.append(
            Experience(i, "learn", train, converted[id(te), task], classes, task_id=task, name=f"{benchmark}_{i}")
        )
    n_classes = int(getattr(bench, "n_classes", 0) or 1 + max(max(e.classes) for e in exps))
    shape = tuple(exps[0].train.x.shape[1:])
    return Stream(f"avalanche_{benchmark}", exps, n_classes, shape, setting=setting)
