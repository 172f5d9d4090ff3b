"""CIFAR-10 input pipeline: one training epoch from the tensor cache vs torchvision ImageFolder + PIL.

Both paths produce the same thing per batch — normalised float tensors after a random 32x32
crop with 4-pixel padding and a random horizontal flip — and are timed in this one process:

- tensor cache: ``TensorLoader`` slices the in-memory tensors, :func:`clframe.data.cifar.augment`
  transforms the whole batch at once (what training with ``scenario=seq_cifar10`` does);
- ImageFolder: ``torchvision.datasets.ImageFolder`` on the extracted JPEGs, PIL decode and
  ``RandomCrop(32, 4) / RandomHorizontalFlip / ToTensor / Normalize`` per image, ``DataLoader``
  with ``--workers`` worker processes (default 0: the same single process as the tensor path).

``--fresh`` first extracts and decodes into a temporary cache folder to time the one-off cost.
Usage: ``python benchmarks/data_pipeline.py [--fresh] [--pil-images 10000] [--workers 0]``
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path


def main() -> None:
    import torch
    from torch.utils.data import DataLoader, Subset
    from torchvision import transforms
    from torchvision.datasets import ImageFolder

    from clframe.data import cifar
    from clframe.stream import TensorLoader

    ap = argparse.ArgumentParser()
    ap.add_argument("--fresh", action="store_true", help="time first-run extraction + decoding in a temp dir")
    ap.add_argument("--pil-images", type=int, default=10000, help="images timed on the PIL path (rate is per image)")
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=128)
    args = ap.parse_args()
    out: dict = {"batch_size": args.batch_size, "threads": torch.get_num_threads()}

    if args.fresh:
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            _, times = cifar.prepare(Path(tmp))
            out["first_run"] = {**times, "total_s": time.perf_counter() - t0}
    path, _ = cifar.prepare()
    t0 = time.perf_counter()
    train, _ = cifar.load_cifar10()
    out["load_tensor_cache_s"] = time.perf_counter() - t0

    torch.manual_seed(0)
    t0 = time.perf_counter()
    n = 0
    for batch in TensorLoader(train, args.batch_size, shuffle=True, seed=0, transform=cifar.augment):
        n += len(batch["y"])
    dt = time.perf_counter() - t0
    out["tensor"] = {"images": n, "seconds": dt, "images_per_s": n / dt}

    norm = transforms.Normalize(cifar.MEAN, cifar.STD)
    tf = transforms.Compose(
        [transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(), transforms.ToTensor(), norm]
    )
    folder = ImageFolder(str(path.parent / "train"), transform=tf)
    idx = torch.randperm(len(folder), generator=torch.Generator().manual_seed(0))[: args.pil_images].tolist()
    loader = DataLoader(Subset(folder, idx), batch_size=args.batch_size, shuffle=False, num_workers=args.workers)
    t0 = time.perf_counter()
    n = sum(len(y) for _, y in loader)
    dt = time.perf_counter() - t0
    out["imagefolder_pil"] = {"images": n, "seconds": dt, "images_per_s": n / dt, "workers": args.workers}
    out["speedup"] = out["tensor"]["images_per_s"] / out["imagefolder_pil"]["images_per_s"]
    out["epoch_seconds_pil_extrapolated"] = len(folder) / out["imagefolder_pil"]["images_per_s"]
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
