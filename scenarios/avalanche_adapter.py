"""Any ``avalanche.benchmarks`` benchmark as a clframe :class:`~clframe.stream.Stream`.

``scenario=avalanche scenario.benchmark=SplitMNIST scenario.args.n_experiences=5`` calls
``avalanche.benchmarks.classic.SplitMNIST(n_experiences=5, seed=<seed>, dataset_root=<data root>)``
and materialises each train / test experience as tensors (one pass through Avalanche's data
loading). Avalanche's own default transforms are replaced by none (``avalanche_transforms=false``),
so inputs are the same tensors our native loaders produce (MNIST in [0, 1]); PIL-image data sets
(Fashion-MNIST, CIFAR) get ``ToTensor`` only, so they are in [0, 1] too (``seq_cifar10`` standardises).

Sample order: Avalanche groups an experience's samples class by class; ``order="original"``
(default) sorts them back by their index in the original data set — the order of our native
``split`` scenario, so the same seed and class order give the same batches and the same accuracy
matrix. ``ids`` are those original indices when Avalanche exposes them.

Never downloads. Avalanche's classic benchmarks build their torchvision data sets with
``download=True`` (and torchvision then creates folders and fetches files when any is missing
or, for CIFAR, fails its md5 check). The adapter therefore supports only the benchmarks whose
files it knows (:data:`BENCHMARKS`); before building one it checks those files under the data
root (:class:`~clframe.errors.DataNotFoundError` listing the missing ones; nothing is created),
and during the build it swaps Avalanche's loaders for the same torchvision classes with
``download=False``. Other ``avalanche.benchmarks.classic`` benchmarks (CORe50, CLEAR,
TinyImageNet, Omniglot, ExML..., which download data or models themselves) are rejected.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from clframe.data import MNIST_FILES, check_mnist_folder, data_root, require_files
from clframe.errors import ConfigError, DataError
from clframe.registry import register_scenario
from clframe.stream import Experience, Stream, TensorData


@dataclass(frozen=True)
class Source:
    """A torchvision data set that an Avalanche benchmark reads from its ``dataset_root``."""

    name: str  # as in messages: "MNIST"
    folder: str  # relative to the dataset root
    files: tuple[str, ...]  # in ``folder``
    loader: str  # the avalanche function that builds (train, test), replaced by a no-download one
    tv_class: str  # its torchvision class (``TensorMNIST``: Avalanche's MNIST returning tensors)
    pil: bool = True  # items are PIL images: ``avalanche_transforms=false`` converts them with ToTensor
    hint: str = ""  # appended to the files-not-found message

    def paths(self, root: Path) -> list[Path]:
        return [root / self.folder / f for f in self.files]


CIFAR_HINT = "(the pickled python version; scenario=seq_cifar10 reads the data root's cifar10-jpg.tar.gz instead)"
IDX = tuple(f for pair in MNIST_FILES.values() for f in pair)
MNIST = Source("MNIST", "MNIST/raw", IDX, "get_mnist_dataset", "TensorMNIST", pil=False)
FMNIST = Source("FashionMNIST", "FashionMNIST/raw", IDX, "get_fmnist_dataset", "FashionMNIST")
CIFAR10 = Source(
    "CIFAR-10",
    "cifar-10-batches-py",
    ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch", "batches.meta"),
    "get_cifar10_dataset",
    "CIFAR10",
    hint=CIFAR_HINT,
)
CIFAR100 = Source(
    "CIFAR-100", "cifar-100-python", ("train", "test", "meta"), "get_cifar100_dataset", "CIFAR100", hint=CIFAR_HINT
)

#: supported benchmark -> ((its dataset-root keyword, the data set read from there), ...)
BENCHMARKS: dict[str, tuple[tuple[str, Source], ...]] = {
    "SplitMNIST": (("dataset_root", MNIST),),
    "PermutedMNIST": (("dataset_root", MNIST),),
    "RotatedMNIST": (("dataset_root", MNIST),),
    "SplitFMNIST": (("dataset_root", FMNIST),),
    "SplitCIFAR10": (("dataset_root", CIFAR10),),
    "SplitCIFAR100": (("dataset_root", CIFAR100),),
    "SplitCIFAR110": (("dataset_root_cifar10", CIFAR10), ("dataset_root_cifar100", CIFAR100)),
}
_BUILD_LOCK = threading.Lock()  # the loader swap is process-wide: one adapter build at a time


def dataset_roots(benchmark: str, given: Mapping[str, Any] | None = None) -> dict[str, Path]:
    """Each dataset-root keyword of ``benchmark``: the one in ``given`` (``scenario.args``), else the data root."""
    given = given or {}
    return {key: Path(given.get(key) or data_root()) for key, _ in BENCHMARKS[benchmark]}


def required_files(benchmark: str, given: Mapping[str, Any] | None = None) -> list[Path]:
    """Every file ``benchmark`` reads (under the data root unless ``given`` sets its dataset-root keyword)."""
    roots = dataset_roots(benchmark, given)
    return [p for key, src in BENCHMARKS[benchmark] for p in src.paths(roots[key])]


def check_files(benchmark: str, given: Mapping[str, Any] | None = None) -> None:
    """Missing files raise :class:`DataNotFoundError` listing them all (clframe never downloads);
    IDX files with a bad header or images / labels counts that disagree raise :class:`DataError`.
    Reads headers only and creates nothing."""
    roots = dataset_roots(benchmark, given)
    names = " + ".join(src.name for _, src in BENCHMARKS[benchmark])
    hint = " ".join(dict.fromkeys(src.hint for _, src in BENCHMARKS[benchmark] if src.hint))
    require_files(*required_files(benchmark, given), dataset=f"Avalanche {benchmark} ({names})", hint=hint)
    for key, src in BENCHMARKS[benchmark]:
        if src.files == IDX:
            check_mnist_folder(roots[key] / src.folder, dataset=src.name)


def _tv_class(src: Source) -> type:
    if src.tv_class == "TensorMNIST":
        from avalanche.benchmarks.datasets.external_datasets.mnist import TensorMNIST

        return TensorMNIST
    import torchvision.datasets

    return getattr(torchvision.datasets, src.tv_class)


def _corrupt_files(cls: type, src: Source, root: Path) -> list[str]:
    """Files failing the md5 check torchvision makes (CIFAR), else every file of ``src``."""
    from torchvision.datasets.utils import check_integrity

    sums = [*getattr(cls, "train_list", []), *getattr(cls, "test_list", [])]
    if isinstance(getattr(cls, "meta", None), dict):
        sums.append((cls.meta["filename"], cls.meta["md5"]))
    bad = [str(root / src.folder / f) for f, md5 in sums if not check_integrity(str(root / src.folder / f), md5)]
    return bad or [str(p) for p in src.paths(root)]


def offline_loader(src: Source) -> Callable[[Any], tuple[Any, Any]]:
    """``loader(dataset_root) -> (train, test)`` as Avalanche's, but ``download=False``; a torchvision
    refusal (files corrupt) becomes a :class:`DataError` naming the files."""
    cls = _tv_class(src)

    def load(dataset_root):
        if dataset_root is None:  # Avalanche would pick (and create) its own default folder
            raise DataError(f"{src.name}: no dataset_root given; clframe passes the data root explicitly")
        root = Path(dataset_root)
        try:
            return tuple(cls(str(root), train=train, download=False) for train in (True, False))
        except RuntimeError as err:
            raise DataError(
                f"{src.name} files are corrupt or incomplete: {', '.join(_corrupt_files(cls, src, root))} "
                f"(torchvision: {err}); replace them with intact copies (clframe never downloads data)"
            ) from err

    return load


@contextmanager
def no_download(benchmark: str) -> Iterator[None]:
    """While building ``benchmark``, its Avalanche module's data loaders are the no-download ones."""
    import avalanche.benchmarks.classic as classic

    module = sys.modules[getattr(classic, benchmark).__module__]
    sources = {src.loader: src for _, src in BENCHMARKS[benchmark]}
    missing = [name for name in sources if not hasattr(module, name)]
    if missing:  # a changed Avalanche: refuse rather than let it download
        raise RuntimeError(f"{module.__name__} has no {', '.join(missing)}; cannot build {benchmark} without download")
    with _BUILD_LOCK:
        originals = {name: getattr(module, name) for name in sources}
        try:
            for name, src in sources.items():
                setattr(module, name, offline_loader(src))
            yield
        finally:
            for name, fn in originals.items():
                setattr(module, name, fn)


def original_indices(dataset) -> torch.Tensor | None:
    """Indices into the original data set, from Avalanche's flat-data index list (``None`` if unavailable)."""
    idx = getattr(getattr(dataset, "_flat_data", None), "_indices", None)
    return torch.as_tensor(list(idx), dtype=torch.long) if idx is not None and len(idx) == len(dataset) else None


def _to_tensor():
    from torchvision.transforms import ToTensor

    return ToTensor()


def to_tensors(dataset, task: int, order: str, batch_size: int = 4096) -> TensorData:
    """Materialise an Avalanche dataset as :class:`TensorData` (x, y, original ids, task)."""
    xs, ys = [], []
    for batch in torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False):
        xs.append(batch[0])
        ys.append(torch.as_tensor(batch[1]))
    x, y = torch.cat(xs).float(), torch.cat(ys).long()
    ids = original_indices(dataset)
    if ids is None:
        ids = torch.arange(len(y))
    data = TensorData(x, y, ids, torch.full((len(y),), task, dtype=torch.long))
    return data.subset(ids.argsort()) if order == "original" else data


@register_scenario("avalanche")
def avalanche(
    *,
    benchmark: str = "SplitMNIST",
    args: Mapping[str, Any] | None = None,
    setting: str = "class",
    order: str = "original",
    avalanche_transforms: bool = False,
    seed: int = 0,
) -> Stream:
    """An ``avalanche.benchmarks.classic`` benchmark of :data:`BENCHMARKS` by name (``args``: its keyword
    arguments, ``null`` ones dropped; ``seed`` and ``dataset_root`` are filled in). ``setting``: class | task |
    domain. ``avalanche_transforms=false``: no transform (MNIST) or ``ToTensor`` only (PIL data sets: [0, 1],
    not standardised)."""
    import avalanche.benchmarks.classic as classic

    if benchmark not in BENCHMARKS:
        others = sorted(
            n for n in dir(classic) if n[0].isupper() and callable(getattr(classic, n)) and n not in BENCHMARKS
        )
        raise ConfigError(
            "scenario.benchmark",
            benchmark,
            sorted(BENCHMARKS),
            hint=f"the other avalanche.benchmarks.classic names ({', '.join(others)}) are not supported: "
            "clframe cannot check their files before Avalanche builds them, and several download data or models "
            "(clframe never downloads)",
        )
    if setting not in ("class", "task", "domain"):
        raise ConfigError("scenario.setting", setting, ["class", "task", "domain"])
    if order not in ("original", "avalanche"):
        raise ConfigError("scenario.order", order, ["original", "avalanche"])
    given = {k: v for k, v in dict(args or {}).items() if v is not None}
    check_files(benchmark, given)  # before Avalanche runs: it would download and create folders
    kwargs = {"seed": seed, **{k: str(v) for k, v in dataset_roots(benchmark, given).items()}, **given}
    if not avalanche_transforms:
        pil = any(src.pil for _, src in BENCHMARKS[benchmark])
        to_tensor = _to_tensor() if pil else None
        kwargs.update(train_transform=to_tensor, eval_transform=to_tensor)
    with no_download(benchmark):
        bench = getattr(classic, benchmark)(**kwargs)
    exps = []
    for i, (tr, te) in enumerate(zip(bench.train_stream, bench.test_stream, strict=True)):
        task = tr.task_label if setting == "task" else 0
        train, test = to_tensors(tr.dataset, task, order), to_tensors(te.dataset, task, order)
        classes = sorted(int(c) for c in tr.classes_in_this_experience)
        exps.append(Experience(i, "learn", train, test, classes, task_id=task, name=f"{benchmark}_{i}"))
    n_classes = int(getattr(bench, "n_classes", 0) or 1 + max(max(e.classes) for e in exps))
    shape = tuple(exps[0].train.x.shape[1:])
    return Stream(f"avalanche_{benchmark}", exps, n_classes, shape, setting=setting)
