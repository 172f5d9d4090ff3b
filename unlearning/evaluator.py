"""The ``unlearning`` evaluator: after each forget event, every unlearning metric for the unlearned
model, the original (the model right before the forget event) and the retrain oracle.

Enable with ``evaluators=[{name: unlearning}]``. Keys (per forget event, in ``metrics.json
["evaluations"]``): ``{unlearn,original,oracle}/{forget,retain,test,forget_test}_acc``,
``unlearn/gap/{forget,retain,test}``, ``unlearn/avg_gap``, ``unlearn/{kl,js}_{oracle,original}/{forget,retain,test}``,
``{model}/mia_{loss,entropy}_auc``, ``{model}/relearn_steps``, ``{model}/{probe,knn}_acc``,
``unlearn/cka_{original,oracle}/<layer>``, ``unlearn/curve`` (accuracies over unlearning steps).
With ``oracle: false`` the oracle-relative keys are absent and :func:`oracle_metric` raises
:class:`~clframe.unlearning.metrics.OracleUnavailableError` for them — never a silent null.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from clframe.evaluation import Evaluator, RunContext
from clframe.fit import Engine
from clframe.introspect import activation_layers, capture
from clframe.optim import make_optimizer
from clframe.registry import register_evaluator
from clframe.runner import predict
from clframe.stream import TensorData, split_test
from clframe.unlearning import metrics as M
from clframe.unlearning.oracle import train_oracle
from clframe.unlearning.plots import plot_unlearning_run

SPLITS = ("forget", "retain", "test")


def oracle_metric(evaluation: dict[str, Any], key: str) -> Any:
    """``evaluation[key]``, or a clear error when ``key`` needs the oracle and it was not computed."""
    if key not in evaluation:
        if "oracle" in key or "gap" in key:
            raise M.OracleUnavailableError(key, "the run's unlearning evaluator had oracle: false")
        raise KeyError(f"{key!r} not in the evaluation; available: {sorted(evaluation)}")
    return evaluation[key]


class ForgetEventEvaluator(Evaluator):
    """What every unlearning evaluator shares: after each learn event it keeps a snapshot of the model (the
    "original" of the next forget event); after a forget event it rebuilds that original, retrains the oracle
    (``oracle: true``) and hands the unlearned model, the original and the oracle to :meth:`measure`."""

    def __init__(self, *, oracle: bool = True, oracle_cache: str | None = None, seed: int = 0):
        self.oracle, self.oracle_cache, self.seed = oracle, oracle_cache, seed
        self.snapshot: dict[str, Any] | None = None
        self.context: RunContext | None = None
        self.cache_dir: Path | None = None

    def setup(self, context: RunContext) -> None:
        self.context = context
        # inside the run directory unless the user shares one folder between runs (a sweep over methods)
        self.cache_dir = Path(self.oracle_cache) if self.oracle_cache else Path(context.run_dir) / "oracle_cache"

    # ------------------------------------------------------------ state
    def _take_snapshot(self, strategy) -> None:
        self.snapshot = {
            "model": {k: v.detach().cpu().clone() for k, v in strategy.state_dict().items()},
            "extra": strategy.checkpoint_state(),
        }

    def state(self) -> dict[str, Any]:
        return {"snapshot": self.snapshot}

    def load_state(self, state: dict[str, Any]) -> None:
        self.snapshot = state.get("snapshot")

    def _copy(self, stream, snapshot: dict[str, Any]):
        model = self.context.new_strategy(None)
        model.restore_checkpoint_state(snapshot["extra"])
        model.load_state_dict(snapshot["model"])
        return model

    # ------------------------------------------------------------ events
    def after_event(self, strategy, stream, exp, device: torch.device) -> dict[str, Any]:
        if exp.kind != "forget":
            self._take_snapshot(strategy)
            return {}
        if self.snapshot is None:
            raise RuntimeError("the unlearning evaluator saw a forget event before any learn event")
        original = self._copy(stream, self.snapshot)
        self._take_snapshot(strategy)  # the model after this event is the "original" of the next one
        copy_now = lambda: self._copy(stream, self.snapshot)  # noqa: E731  (a trainable copy for the attack)
        out: dict[str, Any] = {}
        history = getattr(strategy.unlearner, "history", None)
        if history:
            out["unlearn/curve"] = list(history)
        models = {"unlearn": strategy, "original": original}
        if self.oracle:
            models["oracle"], info = train_oracle(self.context, stream, exp.id, cache_dir=self.cache_dir)
            out["oracle/n_trained_forgotten"] = int(torch.isin(info["trained_ids"], info["forgotten"]).sum())
            out["oracle/cached"] = bool(info["cached"])
        out.update(self.measure(models, stream, exp, device, copy_now))
        return out

    def measure(self, models: dict[str, Any], stream, exp, device: torch.device, copy_unlearned=None) -> dict[str, Any]:
        """The metrics of one forget event, for ``models`` = {unlearn, original[, oracle]}."""
        raise NotImplementedError


@register_evaluator("unlearning")
class UnlearningEvaluator(ForgetEventEvaluator):
    """Forget/retain/test accuracy, gap/KL/JS to the oracle, MIA AUC, relearning steps, probe/k-NN, CKA."""

    def __init__(
        self,
        *,
        oracle: bool = True,
        oracle_cache: str | None = None,
        max_eval: int = 2000,
        relearn: bool = True,
        relearn_max_steps: int = 200,
        relearn_lr: float = 0.01,
        relearn_batch_size: int = 32,
        relearn_fraction: float = 0.5,
        relearn_target: float = 0.9,
        probe: bool = True,
        knn_k: int = 5,
        cka: bool = True,
        cka_samples: int = 500,
        cka_layers: list[str] | None = None,
        seed: int = 0,
    ):
        super().__init__(oracle=oracle, oracle_cache=oracle_cache, seed=seed)
        self.max_eval = max_eval
        self.relearn, self.relearn_max_steps, self.relearn_lr = relearn, relearn_max_steps, relearn_lr
        self.relearn_batch_size, self.relearn_fraction, self.relearn_target = (
            relearn_batch_size,
            relearn_fraction,
            relearn_target,
        )
        self.probe, self.knn_k, self.cka, self.cka_samples, self.cka_layers = probe, knn_k, cka, cka_samples, cka_layers

    def _splits(self, exp) -> dict[str, TensorData]:
        gen = torch.Generator().manual_seed(self.seed)
        sub = lambda d: (
            d
            if len(d) <= self.max_eval
            else d.subset(torch.randperm(len(d), generator=gen)[: self.max_eval].sort().values)
        )  # noqa: E731
        test, gone = split_test(exp)
        splits = {"forget": sub(exp.forget), "test": sub(test)}
        if exp.retain is not None and len(exp.retain):
            splits["retain"] = sub(exp.retain)
        if gone is not None:
            splits["forget_test"] = sub(gone)
        splits["holdout"] = sub(exp.test.subset(torch.isin(exp.test.y, torch.tensor(exp.forget.classes()))))
        return splits

    def measure(self, models: dict[str, Any], stream, exp, device: torch.device, copy_unlearned=None) -> dict[str, Any]:
        s = self._splits(exp)
        logits = {m: {k: predict(model, d, device) for k, d in s.items()} for m, model in models.items()}
        out: dict[str, Any] = {}
        for m, lg in logits.items():
            for k in ("forget", "retain", "test", "forget_test"):
                if k in s:
                    out[f"{m}/{k}_acc"] = M.accuracy(lg[k], s[k].y)
            if len(s["holdout"]):
                out[f"{m}/mia_loss_auc"] = M.loss_mia_auc(lg["forget"], s["forget"].y, lg["holdout"], s["holdout"].y)
                out[f"{m}/mia_entropy_auc"] = M.entropy_mia_auc(lg["forget"], lg["holdout"])
        for ref in ("oracle", "original"):
            if ref in logits:
                for k in SPLITS:
                    if k in s:
                        out[f"unlearn/kl_{ref}/{k}"] = M.kl_divergence(logits[ref][k], logits["unlearn"][k])
                        out[f"unlearn/js_{ref}/{k}"] = M.js_divergence(logits[ref][k], logits["unlearn"][k])
        if "oracle" in logits:
            keys = [k for k in SPLITS if k in s]
            for k in keys:
                out[f"unlearn/gap/{k}"] = M.gap(out[f"unlearn/{k}_acc"], out[f"oracle/{k}_acc"], f"gap/{k}")
            out["unlearn/avg_gap"] = sum(out[f"unlearn/gap/{k}"] for k in keys) / len(keys)
        if self.probe:
            out.update(self._probes(models, s, device))
        if self.cka:
            out.update(self._cka(models, s["forget"], device))
        if self.relearn and copy_unlearned is not None:
            out.update(self._relearn(models, copy_unlearned, s["forget"], device))
        return out

    # ------------------------------------------------------------ representation level
    @torch.no_grad()
    def _features(self, model, data: TensorData, device) -> torch.Tensor:
        model.eval().to(device)
        return torch.cat([model.features(data.x[i : i + 1024].to(device)).cpu() for i in range(0, len(data), 1024)])

    def _probes(self, models, s, device) -> dict[str, float]:
        """Probe fit on half of the test split (all seen classes), scored on the forgotten classes'
        other half of the test split (class forgetting) or on the forget set (sample forgetting)."""
        test = TensorData.concat([s["test"], s["forget_test"]]) if "forget_test" in s else s["test"]
        perm = torch.randperm(len(test), generator=torch.Generator().manual_seed(self.seed))
        fit, rest = test.subset(perm[: len(perm) // 2]), test.subset(perm[len(perm) // 2 :])
        target = rest.subset(torch.isin(rest.y, s["forget_test"].y.unique())) if "forget_test" in s else s["forget"]
        out = {}
        for m, model in models.items():
            f_fit, f_tgt = self._features(model, fit, device), self._features(model, target, device)
            out[f"{m}/probe_acc"] = M.linear_probe_accuracy(f_fit, fit.y, f_tgt, target.y, seed=self.seed)
            out[f"{m}/knn_acc"] = M.knn_accuracy(f_fit, fit.y, f_tgt, target.y, k=self.knn_k)
        return out

    @torch.no_grad()
    def _cka(self, models, forget: TensorData, device) -> dict[str, float]:
        data = forget.subset(torch.arange(min(len(forget), self.cka_samples)))
        acts = {}
        for m, model in models.items():
            names = list(self.cka_layers) if self.cka_layers else activation_layers(model.backbone)
            model.eval().to(device)
            with capture(model.backbone, names) as a:
                feats = model.features(data.x.to(device))
            acts[m] = {**{n: v.cpu() for n, v in a.items()}, "features": feats.cpu()}
        return {
            f"unlearn/cka_{ref}/{layer}": M.linear_cka(acts["unlearn"][layer], acts[ref][layer])
            for ref in ("original", "oracle")
            if ref in acts
            for layer in acts["unlearn"]
        }

    # ------------------------------------------------------------ relearning attack
    def _relearn(self, models, copy_unlearned, forget: TensorData, device) -> dict[str, float]:
        """Fine-tune a copy on ``relearn_fraction`` of the forget set; count steps until accuracy on the
        rest reaches ``relearn_target`` x the original model's accuracy there (capped: max + 1)."""
        perm = torch.randperm(len(forget), generator=torch.Generator().manual_seed(self.seed + 1))
        n = max(1, int(self.relearn_fraction * len(forget)))
        attack, held = forget.subset(perm[:n]), forget.subset(perm[n:] if n < len(forget) else perm)
        target = self.relearn_target * M.accuracy(predict(models["original"], held, device), held.y)
        out = {"relearn_target_acc": target}
        if not any(p.requires_grad for p in models["unlearn"].parameters()):
            return out  # nothing to fine-tune (e.g. NMC on a frozen backbone): no relearning attack
        for m in ("unlearn", "oracle"):
            if m not in models:
                continue
            model = models[m] if m == "oracle" else copy_unlearned()
            steps = self._relearn_curve_steps(model, attack, held, target, device)
            out[f"{m}/relearn_steps"] = steps
        return out

    def _relearn_curve_steps(self, model, attack: TensorData, held: TensorData, target: float, device) -> int:
        model.to(device)
        opt = make_optimizer(
            [p for p in model.parameters() if p.requires_grad], "sgd", lr=self.relearn_lr, momentum=0.9
        )
        gen = torch.Generator().manual_seed(self.seed + 2)

        def loss_at(step: int):
            if M.accuracy(predict(model, held, device), held.y) >= target:
                return None  # reached: stop
            idx = torch.randint(len(attack), (min(self.relearn_batch_size, len(attack)),), generator=gen)
            model.train()
            x, y, t = attack.x[idx].to(device), attack.y[idx].to(device), attack.task[idx].to(device)
            return F.cross_entropy(model(x, t), y)

        engine = self.context.engine if self.context is not None else Engine.default()
        steps = engine.optimize(opt, range(self.relearn_max_steps), loss_at, desc="relearning attack")
        if steps < self.relearn_max_steps or M.accuracy(predict(model, held, device), held.y) >= target:
            return steps
        return self.relearn_max_steps + 1

    # ------------------------------------------------------------ end of run
    def finalize(self, run_dir: Path, result: dict[str, Any]) -> dict[str, float]:
        forget_evals = [
            e.get("unlearning", {})
            for e, ev in zip(result["evaluations"], result["row_events"], strict=True)
            if ev["kind"] == "forget"
        ]
        if not forget_evals:
            return {}
        if result.get("run_dir") and self.context is not None and self.context.plots:
            method = self.context.unlearning or "unlearned"
            plot_unlearning_run(run_dir, result, method)
        last = forget_evals[-1]
        keys = (
            "unlearn/forget_acc",
            "unlearn/retain_acc",
            "unlearn/test_acc",
            "unlearn/avg_gap",
            "unlearn/mia_loss_auc",
        )
        return {k: float(last[k]) for k in keys if k in last}
