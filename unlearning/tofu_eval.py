"""The ``tofu`` evaluator: TOFU's metrics for a causal language model after every forget event, for the
unlearned model, the original (the model right before the request) and the retrain oracle.

Enable with ``evaluators=[{name: tofu}]`` on a text stream (``scenario=fictitious_authors | tofu |
text_jsonl``). Sets: ``forget`` (the request's samples), ``retain`` (the other authors' samples; prior
knowledge such as the generated world facts is measured as a utility set instead), each utility set of
the stream (``world_facts``, ``real_authors``, ``utility``) and ``holdout`` (authors never trained on).
Keys per model ``m`` in {unlearn, original, oracle} (definitions in :mod:`clframe.unlearning.tofu_metrics`):

* ``m/<set>_prob`` — length-normalised answer probability (utility sets: normalised against the
  perturbed answers, as TOFU), ``m/<set>_rouge`` — ROUGE-L recall of greedy answers, ``m/<set>_truth_ratio``
  (forget: ``closer_to_1``, the others ``true_better``), ``m/<set>_acc`` — every answer token greedy-right;
* ``m/model_utility`` — harmonic mean of probability, ROUGE and truth ratio on retain and utility sets;
* ``m/forget_quality`` (+ ``_log10``) — KS-test p-value between the forget-set truth ratios of ``m`` and
  of the oracle (1 for the oracle itself; needs ``oracle: true``);
* ``m/mia_loss_auc``, ``m/mia_mink_auc`` — membership inference, forget set (members) vs held-out authors;
* ``unlearn/cka_{original,oracle}/layer_<i>`` — linear CKA of mean hidden states on the forget set;
  ``m/probe_acc`` — a linear probe on the last prompt token's final hidden state, fit on retain questions
  about one attribute (:func:`probe_attribute`), scored on the forget set's questions about it;
* with ``traces: true`` (off by default), the parametric knowledge traces of Hong et al. 2024
  (:mod:`clframe.unlearning.knowledge_traces`): each forgotten author is a concept (its name tokens,
  :func:`~clframe.unlearning.knowledge_traces.subject_tokens`), its concept vectors are the top ``trace_k`` MLP
  value vectors of the original whose projection through the unembedding promotes them (score at least
  ``trace_threshold``), and ``unlearn/trace_{cos,norm_ratio,score_drop,vector_score_drop,jaccard}`` are the
  means over those vectors of the change from the original to the unlearned model (``trace_n_vectors``,
  ``trace_n_concepts``: how many); ``unlearn/trace_act_ratio`` is the concept vectors' summed activation where
  the authors' answers name them, unlearned over original (present when the original's is positive);
  ``unlearn/retain_trace_*`` the same for retained authors (the control), ``unlearn/trace_cos_all`` the mean
  cosine over every value vector. At most ``trace_concepts`` authors per group (seeded).

Headline keys, also under the names the issue tracker and README use: ``unlearn/forget_quality``,
``unlearn/model_utility``, ``unlearn/truth_ratio`` (forget set), ``unlearn/forget_rouge``, ``unlearn/mia_auc``
(Min-K% Prob attack).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from clframe.registry import register_evaluator
from clframe.stream import TensorData
from clframe.unlearning import knowledge_traces as K
from clframe.unlearning import metrics as M
from clframe.unlearning import tofu_metrics as T
from clframe.unlearning.evaluator import ForgetEventEvaluator
from clframe.unlearning.plots import plot_tofu_run

HEADLINE = {
    "unlearn/forget_quality": "unlearn/forget_quality",
    "unlearn/model_utility": "unlearn/model_utility",
    "unlearn/truth_ratio": "unlearn/forget_truth_ratio",
    "unlearn/forget_rouge": "unlearn/forget_rouge",
    "unlearn/mia_auc": "unlearn/mia_mink_auc",
}


@torch.no_grad()
def answer_scores(model, x: Tensor, device: torch.device, batch_size: int = 64) -> tuple[Tensor, Tensor, Tensor]:
    """Per sample: log p(answer | prompt), answer length, per-token log-probs (N, L - 1), and whether every
    answer token is greedy-right — one forward pass per batch."""
    model.eval().to(device)
    logp, lengths, tokens, right = [], [], [], []
    for i in range(0, len(x), batch_size):
        xb = x[i : i + batch_size].to(device)
        tok, ok = model.backbone.answer_scores(xb)
        tokens.append(tok.cpu())
        logp.append(tok.sum(1).cpu())
        lengths.append(model.backbone.answer_length(xb).cpu())
        right.append(ok.cpu())
    cat = lambda parts: torch.cat(parts) if parts else torch.zeros(0)  # noqa: E731
    return cat(logp), cat(lengths), cat(tokens), cat(right)


def prompt_only(x: Tensor, pad_id: int) -> Tensor:
    """``x`` with the answer tokens removed (padding instead): what the model sees before it answers."""
    ids = x[:, 0].masked_fill(x[:, 1].bool(), pad_id)
    return torch.stack([ids, torch.zeros_like(ids)], 1)


def without_eos(mask: Tensor) -> Tensor:
    """The answer mask without its last position (the end-of-sequence prediction), as open-unlearning's
    Min-K% Prob scores the answer's tokens."""
    last = mask.shape[1] - 1 - mask.flip(1).argmax(1)
    out = mask.clone()
    out[torch.arange(len(mask)), last] = 0
    return out * (mask.sum(1, keepdim=True) > 1)


def author_samples(stream, exp) -> TensorData:
    """The trained samples of a forget event's authors: forget and retain sets, prior knowledge (the stream's
    ``utility_classes``, e.g. the generated world facts) left out."""
    skip = torch.tensor(stream.extras.get("utility_classes", []), dtype=torch.long)
    data = TensorData.concat([exp.forget, exp.retain])
    return data.subset(~torch.isin(data.y, skip))


def probe_attribute(forget: dict[str, Any], retain: dict[str, Any]) -> str | None:
    """The attribute a probe can be asked about: among those the forget set asks, the one whose forget-set
    values all occur in the retain set (a probe cannot name a value it never saw), with the fewest distinct
    values (most examples per value); ``None`` if no attribute has two values in the retain set."""
    best = None
    for attribute in sorted(set(forget["attributes"])):
        seen = {int(v) for a, v in zip(retain["attributes"], retain["labels"]) if a == attribute}
        wanted = {int(v) for a, v in zip(forget["attributes"], forget["labels"]) if a == attribute}
        if len(seen) < 2:
            continue
        key = (len(wanted - seen) / len(wanted), len(seen))
        best = min(best, (key, attribute)) if best else (key, attribute)
    return best[1] if best else None


@register_evaluator("tofu")
class TofuEvaluator(ForgetEventEvaluator):
    """TOFU metrics (probability, ROUGE-L, truth ratio, forget quality, model utility), MIA, CKA, probes."""

    models = ("language_model",)

    def __init__(
        self,
        *,
        oracle: bool = True,
        oracle_cache: str | None = None,
        max_eval: int = 200,
        max_new_tokens: int = 32,
        generation: bool = True,
        mink: float = 0.4,
        cka: bool = True,
        probe: bool = True,
        traces: bool = False,
        trace_k: int = 4,
        trace_threshold: float = 3.0,
        trace_concepts: int = 20,
        seed: int = 0,
    ):
        super().__init__(oracle=oracle, oracle_cache=oracle_cache, seed=seed)
        self.max_eval, self.max_new_tokens, self.generation, self.mink = max_eval, max_new_tokens, generation, mink
        self.cka, self.probe = cka, probe
        self.traces, self.trace_k, self.trace_threshold, self.trace_concepts = (
            traces,
            trace_k,
            trace_threshold,
            trace_concepts,
        )

    # ------------------------------------------------------------ the evaluation sets
    def _sub(self, n: int) -> Tensor:
        gen = torch.Generator().manual_seed(self.seed)
        return (
            torch.arange(n) if n <= self.max_eval else torch.randperm(n, generator=gen)[: self.max_eval].sort().values
        )

    def _sets(self, stream, exp) -> dict[str, dict[str, Any]]:
        ex = stream.extras
        sets: dict[str, dict[str, Any]] = {}
        skip = torch.tensor(ex.get("utility_classes", []), dtype=torch.long)
        for name, data in (("forget", exp.forget), ("retain", exp.retain)):
            if data is None or not len(data):
                continue
            if len(skip):
                data = data.subset(~torch.isin(data.y, skip))
            data = data.subset(self._sub(len(data)))
            ids = data.ids
            sets[name] = {
                "data": data,
                "answers": [ex["answers"][int(i)] for i in ids],
                "labels": ex["labels"][ids],
                "attributes": [ex["attributes"][int(i)] for i in ids] if "attributes" in ex else None,
                **{
                    k: (ex[k][ids] if ex.get(k) is not None else None) for k in ("has_truth", "paraphrase", "perturbed")
                },
            }
        for group in ("utility", "holdout"):
            for name, part in ex.get(group, {}).items():
                index = self._sub(len(part["data"]))
                sets[name] = {
                    "data": part["data"].subset(index),
                    "answers": [part["answers"][int(i)] for i in index],
                    "utility": group == "utility",
                    **{
                        k: (part[k][index] if part.get(k) is not None else None)
                        for k in ("has_truth", "paraphrase", "perturbed")
                    },
                }
        return sets

    # ------------------------------------------------------------ per model and set
    def _truth_scores(self, model, s: dict[str, Any], device) -> dict[str, Tensor] | None:
        """Log-likelihoods and lengths of the paraphrased (N,) and perturbed (N, K) answers of the samples that
        have them (``None`` when the set has none)."""
        has = s.get("has_truth")
        if has is None or s.get("perturbed") is None or not bool(has.any()):
            return None
        para, pert = s["paraphrase"][has], s["perturbed"][has]
        p_lp, p_len, _, _ = answer_scores(model, para, device)
        n, k = pert.shape[:2]
        q_lp, q_len, _, _ = answer_scores(model, pert.flatten(0, 1), device)
        return {"para_lp": p_lp, "para_len": p_len, "pert_lp": q_lp.view(n, k), "pert_len": q_len.view(n, k)}

    def _generate(self, model, s: dict[str, Any], device) -> np.ndarray:
        lm = model.backbone
        x = s["data"].x
        starts = x[:, 1].argmax(1)  # first answer position (the answer mask is 1 from there)
        prompts = [x[i, 0, : int(starts[i])] for i in range(len(x))]
        model.eval().to(device)
        outs = []
        for i in range(0, len(prompts), 64):
            outs += lm.generate(prompts[i : i + 64], max_new_tokens=self.max_new_tokens)
        texts = [lm.tokenizer.decode(o.tolist(), skip_special_tokens=True).strip() for o in outs]
        return T.rouge_l_recall(texts, s["answers"])

    def _measure_model(self, model, sets, device) -> tuple[dict[str, Any], dict[str, Any]]:
        out: dict[str, Any] = {}
        raw: dict[str, Any] = {}
        for name, s in sets.items():
            logp, length, tokens, right = answer_scores(model, s["data"].x, device)
            raw[name] = {"logp": logp, "length": length, "tokens": tokens, "mask": s["data"].x[:, 1, 1:]}
            out[f"{name}_acc"] = float(right.float().mean())
            if name == "holdout":
                continue
            truth = self._truth_scores(model, s, device)
            tr = (
                None
                if truth is None
                else T.truth_ratio(*(truth[k] for k in ("para_lp", "para_len", "pert_lp", "pert_len")))
            )
            raw[name]["truth_ratio"] = tr
            if s.get("utility") and truth is not None:
                has = s["has_truth"]
                prob = T.option_probability(logp[has], length[has], truth["pert_lp"], truth["pert_len"])
            else:
                prob = T.normalized_probability(logp, length)
            out[f"{name}_prob"] = float(np.mean(prob))
            if tr is not None:
                agg = T.truth_ratio_closer_to_1_better if name == "forget" else T.truth_ratio_true_better
                out[f"{name}_truth_ratio"] = float(agg(tr))
            if self.generation:
                out[f"{name}_rouge"] = float(np.mean(self._generate(model, s, device)))
        parts = [
            out[f"{name}_{m}"]
            for name in sets
            if name == "retain" or sets[name].get("utility")
            for m in ("prob", "rouge", "truth_ratio")
            if f"{name}_{m}" in out
        ]
        if parts:
            out["model_utility"] = float(T.model_utility(parts))
        if "holdout" in raw and "forget" in raw:
            f, h = raw["forget"], raw["holdout"]
            out["mia_loss_auc"] = T.mia_auc(
                T.loss_scores(f["logp"], f["length"]), T.loss_scores(h["logp"], h["length"]), higher_is_member=False
            )
            fk = T.min_k_scores(f["tokens"], without_eos(f["mask"]), k=self.mink)
            hk = T.min_k_scores(h["tokens"], without_eos(h["mask"]), k=self.mink)
            out["mia_mink_auc"] = T.mia_auc(fk, hk, higher_is_member=False)
        return out, raw

    def measure(self, models, stream, exp, device, copy_unlearned=None) -> dict[str, Any]:
        sets = self._sets(stream, exp)
        out: dict[str, Any] = {}
        raw = {}
        for m, model in models.items():
            values, raw[m] = self._measure_model(model, sets, device)
            out.update({f"{m}/{k}": v for k, v in values.items()})
        tr_oracle = raw.get("oracle", {}).get("forget", {}).get("truth_ratio")
        if tr_oracle is not None:
            for m in models:
                p = T.forget_quality(raw[m]["forget"]["truth_ratio"], tr_oracle)
                out[f"{m}/forget_quality"] = float(p)
                out[f"{m}/forget_quality_log10"] = math.log10(max(p, 1e-300))
        if self.cka:
            out.update(self._cka(models, sets["forget"]["data"], device))
        if self.probe and "retain" in sets and sets["forget"].get("attributes"):
            out.update(self._probe(models, sets, device))
        if self.traces:
            out.update(self._traces(models, stream, exp))
        for key, source in HEADLINE.items():
            if source in out:
                out[key] = out[source]
        return out

    # ------------------------------------------------------------ representation level
    @torch.no_grad()
    def _hidden(self, model, x: Tensor, device, pool: str) -> list[Tensor]:
        model.eval().to(device)
        parts = [model.backbone.hidden_states(x[i : i + 64].to(device), pool=pool) for i in range(0, len(x), 64)]
        return [torch.cat([p[layer] for p in parts]).float().cpu() for layer in range(len(parts[0]))]

    def _cka(self, models, forget: TensorData, device) -> dict[str, float]:
        acts = {m: self._hidden(model, forget.x, device, "mean") for m, model in models.items()}
        return {
            f"unlearn/cka_{ref}/layer_{i}": M.linear_cka(acts["unlearn"][i], acts[ref][i])
            for ref in ("original", "oracle")
            if ref in acts
            for i in range(1, len(acts["unlearn"]))
        }

    def _probe(self, models, sets, device) -> dict[str, float]:
        forget, retain = sets["forget"], sets["retain"]
        attribute = probe_attribute(forget, retain)
        if attribute is None:
            return {}
        pick = lambda s: torch.tensor([a == attribute for a in s["attributes"]])  # noqa: E731
        fit_rows, target_rows = pick(retain), pick(forget)
        fit_y, target_y = retain["labels"][fit_rows], forget["labels"][target_rows]
        out = {"probe_attribute": attribute}
        for m, model in models.items():
            lm = model.backbone
            f_fit = self._hidden(model, prompt_only(retain["data"].x[fit_rows], lm.pad_id), device, "last")[-1]
            f_tgt = self._hidden(model, prompt_only(forget["data"].x[target_rows], lm.pad_id), device, "last")[-1]
            out[f"{m}/probe_acc"] = M.linear_probe_accuracy(f_fit, fit_y, f_tgt, target_y, seed=self.seed)
        return out

    def _traces(self, models, stream, exp) -> dict[str, float]:
        """Concept vectors of forgotten and of retained authors (their name tokens), found in the original, and
        how the unlearned model changed them (:func:`~clframe.unlearning.knowledge_traces.trace_change`) and
        their activations where the authors' answers name them."""
        original, unlearned = models["original"], models["unlearn"]
        data = author_samples(stream, exp)
        names = K.subject_tokens(data.x, data.y, exclude=original.backbone.tokenizer.all_special_ids)
        forgotten = set(exp.forget.y.tolist())
        gen = torch.Generator().manual_seed(self.seed)
        out: dict[str, float] = {}
        for group, prefix in (("forget", "unlearn/trace_"), ("retain", "unlearn/retain_trace_")):
            classes = sorted(c for c in names if (c in forgotten) == (group == "forget"))
            if len(classes) > self.trace_concepts:
                pick = torch.randperm(len(classes), generator=gen)[: self.trace_concepts].sort().values
                classes = [classes[i] for i in pick]
            found = K.find_concept_vectors(
                original, [names[c] for c in classes], k=self.trace_k, threshold=self.trace_threshold
            )
            summary = K.summarize(K.trace_change(original, unlearned, found))
            out.update({f"{prefix}{k}": v for k, v in summary.items()})
            act = {"original": 0.0, "unlearn": 0.0}
            for c, f in zip(classes, found):
                x = data.x[data.y == c]
                pos = K.concept_positions(x, f.tokens)
                if len(f) and pos.any():
                    for m in act:
                        act[m] += float(K.concept_activations(models[m], f, x, positions=pos).sum())
            if act["original"] > 0:
                out[f"{prefix}act_ratio"] = act["unlearn"] / act["original"]
        out["unlearn/trace_cos_all"] = float(K.value_vector_cosines(original, unlearned).mean())
        return out

    # ------------------------------------------------------------ end of run
    def finalize(self, run_dir: Path, result: dict[str, Any]) -> dict[str, float]:
        forget_evals = [
            e.get("tofu", {})
            for e, ev in zip(result["evaluations"], result["row_events"], strict=True)
            if ev["kind"] == "forget"
        ]
        if not forget_evals:
            return {}
        if result.get("run_dir") and self.context is not None and self.context.plots:
            plot_tofu_run(run_dir, result, self.context.unlearning or "unlearned")
        last = forget_evals[-1]
        return {k: float(last[k]) for k in HEADLINE if k in last}
