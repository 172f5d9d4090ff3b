"""Issue 6 numbers: CLR and HyperInterval vs naive / EWC / LwF (reduced CPU protocols).

    OMP_NUM_THREADS=1 nice python benchmarks/architecture_methods.py [overhead|clr|hi_split|hi_perm|cifar ...]

Each run is an ordinary ``clframe run`` config (presets in experiments/experiment/); results go to
runs/architecture_methods/<group>/<label>/ (complete runs there are read back instead of repeated) and a
markdown table is printed per group.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from clframe.config import compose
from clframe.runner import run

COMMON = ["logger=none", "progress_bar=none", "plots=false", "seed=0"]
HI_SPLIT = [
    "scenario=split_mnist_task",
    "backbone=mlp",
    "backbone.hidden=[100,100]",
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=100",
    "strategy.batch_size=64",
    "strategy.lr=0.01",
    "strategy.momentum=0.9",
]
HI_PERM = [
    "scenario=permuted_mnist",
    "scenario.setting=task",
    "backbone=mlp",
    "backbone.hidden=[100,100]",
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=100",
    "strategy.batch_size=128",
    "strategy.lr=0.01",
    "strategy.momentum=0.9",
]
UNIVERSAL = [
    "strategy.universal=true",
    "strategy.custom_init=true",
    "strategy.inference=universal",
    "strategy.kappa_decay=5e-5",
    "strategy.beta=0.5",
]
CIFAR = [
    "experiment=clr_split_mnist",
    "scenario=seq_cifar10_task",
    "scenario.train_per_class=1000",
    "scenario.test_per_class=300",
    "scenario.augment=false",
]

GROUPS = {
    "clr": [
        ("naive", ["experiment=clr_split_mnist", "strategy=naive"]),
        ("ewc", ["experiment=clr_split_mnist", "strategy=ewc", "strategy.lam=100", "strategy.lr=0.01"]),
        ("lwf", ["experiment=clr_split_mnist", "strategy=lwf"]),
        ("per-task fine-tuned", ["experiment=clr_split_mnist", "strategy.reprogram=full"]),
        ("CLR", ["experiment=clr_split_mnist"]),
    ],
    "hi_split": [
        ("split: naive", [*HI_SPLIT, "strategy=naive"]),
        ("split: ewc", [*HI_SPLIT, "strategy=ewc", "strategy.lam=100"]),
        ("split: lwf", [*HI_SPLIT, "strategy=lwf"]),
        ("split: HyperInterval (per-task)", ["experiment=hyperinterval_split_mnist"]),
        ("split: HyperInterval (universal)", ["experiment=hyperinterval_split_mnist", *UNIVERSAL]),
    ],
    "hi_perm": [
        ("perm: naive", [*HI_PERM, "strategy=naive"]),
        ("perm: ewc", [*HI_PERM, "strategy=ewc", "strategy.lam=100"]),
        ("perm: lwf", [*HI_PERM, "strategy=lwf"]),
        ("perm: HyperInterval (per-task)", ["experiment=hyperinterval_permuted_mnist"]),
        ("perm: HyperInterval (universal)", ["experiment=hyperinterval_permuted_mnist", *UNIVERSAL]),
    ],
    "cifar": [
        ("cifar: naive", [*CIFAR, "strategy=naive"]),
        ("cifar: ewc", [*CIFAR, "strategy=ewc", "strategy.lam=100", "strategy.lr=0.01"]),
        ("cifar: lwf", [*CIFAR, "strategy=lwf"]),
        ("cifar: per-task fine-tuned", [*CIFAR, "strategy.reprogram=full"]),
        ("cifar: CLR", CIFAR),
    ],
}


def overhead() -> None:
    """CLR parameters added per task on ResNet-18 (CIFAR stem) and on the SmallCNN."""
    from clframe.registry import BACKBONES, load_plugins
    from clframe.strategies.clr import CLR

    load_plugins()
    for name, node, shape in [
        ("resnet18", {"name": "resnet18"}, (3, 32, 32)),
        ("cnn [32,64,128]", {"name": "cnn"}, (1, 28, 28)),
        ("cnn [16,32,64]", {"name": "cnn", "channels": [16, 32, 64]}, (1, 28, 28)),
    ]:
        for skip in (False, True):
            s = CLR(BACKBONES.build(node, input_shape=shape), 10, setting="task", anchor="random", skip_pointwise=skip)
            s.add_task("0")
            s.current = "0"
            o = s.overhead()
            print(
                f"| {name} | {'yes' if skip else 'no'} | {o['backbone']:,} "
                f"| {o['reprogram_conv']:,} ({o['pct_conv']:.3f}%) "
                f"| {o['norm_or_copies']:,} | {o['pct_conv_norm']:.3f}% | {o['pct_with_head']:.3f}% |"
            )


def main(groups: list[str]) -> None:
    for group in groups:
        if group == "overhead":
            overhead()
            continue
        rows = []
        for label, overrides in GROUPS[group]:
            slug = label.replace(" ", "_").replace(":", "").replace("(", "").replace(")", "")
            done = Path(f"runs/architecture_methods/{group}/{slug}/metrics.json")
            res = json.loads(done.read_text()) if done.is_file() else {}
            if res.get("status") != "complete":  # finished runs are read back, not repeated
                res = run(
                    compose(
                        [*COMMON, f"run_dir=runs/architecture_methods/{group}/{slug}", "overwrite=true", *overrides]
                    )
                )
            m = res["metrics"]
            rows.append(
                f"| {label} | {100 * m['cl/avg_acc']:.2f} | {100 * m['cl/forgetting']:.2f} | "
                f"{sum(res['seconds_per_experience']):.0f} |"
            )
            print(rows[-1], flush=True)
        print(
            "\n| method | avg acc (%) | forgetting (%) | seconds |\n|---|---|---|---|\n" + "\n".join(rows), flush=True
        )


if __name__ == "__main__":
    main(sys.argv[1:] or ["overhead", "clr", "hi_split", "hi_perm"])
