"""Model replacement (Stationary Representations, Biondi et al. 2024): a model is fine-tuned along
a 5-step class-incremental stream and, after step ``--replace-at``, replaced by a model "downloaded"
from elsewhere — trained with another seed, jointly on all data up to that step, for more epochs —
then fine-tuning continues from it. With the fixed d-Simplex classifier (CoReS / CL2R) both models
share the class prototypes, so the new model's queries should still find the old galleries (ECC);
a learnable classifier (naive) gives no such guarantee.

    python benchmarks/model_replacement.py --strategies naive cores cl2r --out benchmarks/model_replacement.md

Reports, per strategy, with and without the replacement: the compatibility matrix (rank-1),
AC, AM, the ECC of the replaced model against every earlier gallery, and the retrieval gain of
the replacement (self-test of the replaced vs the sequentially fine-tuned model at that step).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from clframe.config import compose
from clframe.fit import Engine
from clframe.metrics import compatibility as C
from clframe.metrics.retrieval_eval import RetrievalEvaluator
from clframe.runner import build, eval_device, learn_experience, seed_all
from clframe.stream import Experience, TensorData


def fit(strategy, exp: Experience, cfg, seed: int) -> None:
    seed_all(seed)
    strategy.seed = seed
    learn_experience(Engine.from_config(cfg), strategy, exp)


def downloaded_model(cfg, stream, upto: int, seed: int, epochs: int):
    """A model trained elsewhere: other seed, all data of experiences 0..upto at once, more epochs."""
    seed_all(seed)
    _, model = build(_with(cfg, seed=seed))
    exps = stream.learn_experiences[: upto + 1]
    joint = Experience(
        0,
        "learn",
        TensorData.concat([e.train for e in exps]),
        None,
        sorted({c for e in exps for c in e.classes}),
        transform=exps[0].transform,
    )
    fit(model, joint, _with(cfg, **{"trainer.max_epochs": epochs}), seed)
    return model


def _with(cfg, **overrides):
    from omegaconf import OmegaConf

    cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    for k, v in overrides.items():
        OmegaConf.update(cfg, k, v)
    return cfg


def stream_run(cfg, replace_at: int | None, external) -> np.ndarray:
    stream, strategy = build(cfg)
    ev = RetrievalEvaluator(**{k: v for k, v in cfg.evaluators[0].items() if k != "name"})
    device = eval_device(cfg)
    for exp in stream.experiences:
        fit(strategy, exp, cfg, int(cfg.seed) * 1000 + exp.id)
        if exp.id == replace_at:  # swap in the downloaded network; memory and bookkeeping stay
            strategy.backbone.load_state_dict(external.backbone.state_dict())
            strategy.head.load_state_dict(external.head.state_dict())
        ev.after_event(strategy, stream, exp, device)
        strategy.cpu()
    return ev.matrix("rank1")


def report(name: str, M: np.ndarray, r: int) -> dict:
    ecc_r = [C.ecc(M, r, j) for j in range(r)]
    return {
        "strategy": name,
        "AC": C.average_compatibility(M),
        "AC_ties": C.average_compatibility(M, strict=False),
        "AM": C.average_multimodel_accuracy(M),
        "ecc_replaced_vs_old": ecc_r,
        "M": M.round(4).tolist(),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--strategies", nargs="+", default=["naive", "cores", "cl2r"])
    p.add_argument("--preset", default="retrieval_split_mnist")
    p.add_argument("--replace-at", type=int, default=2)
    p.add_argument("--external-epochs", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--extra", nargs="*", default=[])
    p.add_argument("--out", default=None)
    args = p.parse_args()
    r = args.replace_at
    lines = [
        "| method | replaced at step | AC (AC with ties) | AM rank-1 (%) | self rank-1 at step r (%) | "
        "ECC replaced vs earlier galleries | old-gallery rank-1 M[r, r-1] vs M[r-1, r-1] (%) |",
        "|---|---|---|---|---|---|---|",
    ]
    details = []
    for s in args.strategies:
        cfg = compose(
            [
                f"experiment={args.preset}",
                f"strategy={s}",
                f"seed={args.seed}",
                "logger=none",
                "progress_bar=none",
                *args.extra,
            ]
        )
        stream, _ = build(cfg)
        external = downloaded_model(cfg, stream, r, args.seed + 100, args.external_epochs)
        for label, at in (("none", None), (str(r), r)):
            M = stream_run(cfg, at, external)
            rep = report(s, M, r)
            details.append({**rep, "replace_at": at})
            lines.append(
                f"| {s} | {label} | {rep['AC']:.2f} ({rep['AC_ties']:.2f}) | {100 * rep['AM']:.1f} | "
                f"{100 * M[r, r]:.1f} | "
                f"{sum(rep['ecc_replaced_vs_old'])}/{r} | {100 * M[r, r - 1]:.1f} vs {100 * M[r - 1, r - 1]:.1f} |"
            )
            print(lines[-1], flush=True)
    table = "\n".join(lines)
    print(table)
    if args.out:
        Path(args.out).write_text(table + "\n\n```json\n" + json.dumps(details, indent=1) + "\n```\n")


if __name__ == "__main__":
    main()
