"""Parametric knowledge traces of a causal LM: concept vectors, how unlearning changes them, and ablation.

Hong et al. 2024 ("Intrinsic Evaluation of Unlearning Using Parametric Knowledge Traces", ConceptVectors) read
the knowledge a model holds about a concept from its MLP **value vectors**: column ``j`` of a layer's MLP output
projection is what neuron ``j`` adds to the residual stream, and its projection through the unembedding,
``E v`` (one logit per vocabulary token), says which tokens it promotes. A vector whose projection promotes a
concept's tokens is a *concept vector*. Unlearning is then judged inside the parameters: how much did the
concept vectors change (cosine, norm), and do they still promote the concept? Ablating them directly is the
causal check that they carry the concept.

What this module computes, following the authors' code (``yihuaihong/ConceptVectors``, ``evaluate_util.py``
and the concept-validation notebook), and where it differs:

* **value vectors** (:func:`value_vectors`): Llama-style ``mlp.down_proj`` (``nn.Linear``, weight ``(H, I)``:
  vector ``j`` is the column ``weight[:, j]``, as the authors index ``down_proj.weight[:, dim]``) and GPT-2's
  ``mlp.c_proj`` (a ``Conv1D`` whose weight is stored transposed, ``(I, H)``: vector ``j`` is the row
  ``weight[j]``). With peft LoRA the effective weight is used (base + every active adapter's delta).
* **projection** (:func:`project`): ``E v`` with ``E`` the output embedding (``lm_head``) and **no final norm**,
  as the authors (``params.T @ E.T``); a single vector through the final RMSNorm / LayerNorm would only be
  rescaled (RMSNorm, up to its gain) or re-centred, and the authors do not apply it.
* **matching a concept** (:func:`concept_scores`): the authors read the top-200 tokens of each projection and
  keep vectors whose tokens GPT-4 judges to be about a concept (with a Wikipedia-token overlap check). Here a
  concept is a set of token ids (an author's name, an attribute value) and a vector's score is the mean
  standardised logit of those tokens, ``(mean_{t in C} (Ev)_t - mean_t (Ev)_t) / std_t (Ev)_t`` — a number
  instead of a judgement, computed for all vectors at once through the ``H x H`` Gram matrix of ``E``
  (no ``vectors x vocabulary`` matrix is materialised). :func:`find_concept_vectors` keeps the top-``k`` vectors
  per concept whose score reaches a threshold (the authors keep one vector per concept, validated causally).
* **change** (:func:`trace_change`): per concept vector, the cosine similarity and the norm ratio between the
  original and the unlearned model (the authors report the cosine and ``||v_o - v_u||``), the drop of its
  concept score (each model projecting through its own unembedding: what the vector promotes in that model),
  and the Jaccard similarity of the top-token sets of the two projections (the authors' ``jaccard_similarity``,
  200 of Llama-2's 32,000 tokens: the same 0.625 % of the vocabulary here, at least 10 tokens).
* **ablation** (:func:`ablated`, :func:`ablation_effect`): the concept vectors are set to zero (or to their
  layer's mean value vector) and the drop of the concept's answer log-probability is compared with ablating
  as many random value vectors of the same layers (the authors add Gaussian noise to the vector instead and
  compare BLEU / ROUGE of the concept's and unrelated answers).

Functions accept a :class:`~clframe.strategy.Strategy` with a language-model backbone, the
:class:`~clframe.backbones.causal_lm.CausalLM` backbone, or the Hugging Face model itself.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from clframe.backbones.causal_lm import CausalLM
from clframe.introspect import capture_io
from clframe.strategy import Strategy

__all__ = [
    "ConceptVectors",
    "ablated",
    "ablation_effect",
    "concept_activations",
    "concept_positions",
    "concept_scores",
    "find_concept_vectors",
    "language_model",
    "project",
    "random_locations",
    "subject_tokens",
    "summarize",
    "text_tokens",
    "top_token_count",
    "trace_change",
    "unembedding",
    "value_vector_cosines",
    "value_vectors",
]

#: the authors' top-200 tokens of Llama-2's 32,000 (``evaluate_util.py::jaccard_similarity``), as a share
TOP_TOKEN_SHARE = 200 / 32000


@dataclass(frozen=True)
class ConceptVectors:
    """The value vectors found for one concept in one model: layer, index in the layer, and score of each."""

    tokens: Tensor  # the concept's token ids
    layer: Tensor  # (k,) long
    index: Tensor  # (k,) long
    score: Tensor  # (k,) float: the concept score of each vector in the model it was found in

    def __len__(self) -> int:
        return len(self.layer)


# ---------------------------------------------------------------------------------------------------- the model
def language_model(model: Any) -> nn.Module:
    """The Hugging Face model behind a strategy, a :class:`CausalLM` or a peft model (LoRA layers in place)."""
    if isinstance(model, Strategy):
        model = model.backbone
    if isinstance(model, CausalLM):
        model = model.model
    if hasattr(model, "get_base_model"):  # peft's PeftModel: the wrapped model, adapters injected
        model = model.get_base_model()
    if not hasattr(model, "get_output_embeddings"):
        raise TypeError(f"expected a causal language model (strategy, CausalLM or transformers model), got {model!r}")
    return model


def _mlp_outputs(model: Any) -> list[nn.Module]:
    """Per decoder layer, the module whose weight holds the MLP value vectors."""
    hf = language_model(model)
    body = hf.base_model
    layers = getattr(body, "layers", None) or getattr(body, "h", None)
    modules = []
    for i, layer in enumerate(layers or []):
        mlp = getattr(layer, "mlp", None)
        out = getattr(mlp, "down_proj", None) or getattr(mlp, "c_proj", None)
        if out is None:
            raise TypeError(f"layer {i} of {type(hf).__name__} has no mlp.down_proj / mlp.c_proj")
        modules.append(out)
    if not modules:
        raise TypeError(f"{type(hf).__name__}: no decoder layers found (supported: Llama-style, GPT-2)")
    return modules


def _transposed(module: nn.Module) -> bool:
    """GPT-2's ``Conv1D`` stores its weight as (in, out); ``nn.Linear`` as (out, in)."""
    return type(getattr(module, "base_layer", module)).__name__ == "Conv1D"


def _lora_delta(module: nn.Module) -> Tensor | None:
    """The summed weight delta of a peft LoRA layer's active, unmerged adapters (in the base weight's layout)."""
    if not hasattr(module, "lora_A") or getattr(module, "merged", False) or getattr(module, "disable_adapters", False):
        return None
    delta = None
    for name in module.active_adapters:
        if name not in module.lora_A:
            continue
        if name in getattr(module, "lora_variant", {}):
            raise NotImplementedError(f"LoRA variant {type(module.lora_variant[name]).__name__} (e.g. DoRA)")
        d = module.get_delta_weight(name)
        delta = d if delta is None else delta + d
    return delta


def _rows(module: nn.Module) -> Tensor:
    """(I, H) value vectors of one MLP output module, from its effective weight (detached)."""
    base = getattr(module, "base_layer", module)
    weight = base.weight.detach()
    delta = _lora_delta(module)
    if delta is not None:
        weight = weight + delta.detach().to(weight.dtype)
    return weight if _transposed(module) else weight.T


def value_vectors(model: Any, layer: int) -> Tensor:
    """Layer ``layer``'s MLP value vectors, ``(I, H)``: row ``j`` is what neuron ``j`` adds to the residual stream
    per unit of activation (``down_proj.weight[:, j]``; GPT-2: ``c_proj.weight[j]``; LoRA merged in)."""
    return _rows(_mlp_outputs(model)[layer])


def n_layers(model: Any) -> int:
    """Number of decoder layers (each has one MLP, hence one matrix of value vectors)."""
    return len(_mlp_outputs(model))


def unembedding(model: Any) -> Tensor:
    """The output embedding ``E``, ``(V, H)``: ``E @ h`` are the next-token logits of a final hidden state."""
    head = language_model(model).get_output_embeddings()
    weight = head.weight.detach()
    delta = _lora_delta(head)
    return weight if delta is None else weight + delta.detach().to(weight.dtype)


def project(vectors: Tensor, unembed: Tensor) -> Tensor:
    """``(N, V)`` logits each vector adds through the unembedding (``E v``; no final norm, as the authors)."""
    return vectors.to(unembed.dtype) @ unembed.T


# ---------------------------------------------------------------------------------------------------- concepts
def text_tokens(tokenizer: Any, texts: Sequence[str] | str, *, leading_space: bool = True) -> Tensor:
    """The token ids of ``texts`` (special tokens never included): a concept's tokens. With ``leading_space``
    each text is tokenised as it appears inside a sentence (``" " + text``, how answers are encoded)."""
    texts = [texts] if isinstance(texts, str) else list(texts)
    special = set(tokenizer.all_special_ids)
    prefix = " " if leading_space else ""
    ids = {i for t in texts for i in tokenizer(prefix + t, add_special_tokens=False)["input_ids"]}
    return torch.tensor(sorted(ids - special), dtype=torch.long)


def subject_tokens(
    x: Tensor,
    y: Tensor,
    *,
    exclude: Sequence[int] = (),
    min_frac: float = 0.5,
    max_share: float = 0.1,
) -> dict[int, Tensor]:
    """Per class (author), the tokens that name it in its questions: tokens in at least ``min_frac`` of the
    class's prompts and in the prompts of at most ``max(1, max_share x n_classes)`` classes (so template words
    drop out and a shared first name stays only if few authors share it). ``x``: encoded pairs ``(N, 2, L)``
    (ids, answer mask); the prompt is every non-answer position; ``exclude``: pad / bos / other special ids.
    For the fictitious authors these are exactly the author's name tokens. A class with none is left out."""
    ids, answer = x[:, 0], x[:, 1].bool()
    classes, cls = torch.unique(y, return_inverse=True)
    keep = ~answer & ~torch.isin(ids, torch.as_tensor(list(exclude), dtype=ids.dtype))
    sample = torch.arange(len(ids))[:, None].expand_as(ids)[keep]
    seen = torch.unique(torch.stack([sample, ids[keep]]), dim=1)  # distinct (sample, token) pairs
    pairs, n_samples = torch.unique(torch.stack([cls[seen[0]], seen[1]]), dim=1, return_counts=True)
    share = n_samples / torch.bincount(cls, minlength=len(classes))[pairs[0]]  # of the class's prompts
    n_classes_using = torch.bincount(pairs[1])[pairs[1]]  # (class, token) pairs are distinct: classes per token
    limit = max(1, int(max_share * len(classes)))
    chosen = (share >= min_frac) & (n_classes_using <= limit)
    out = {}
    for c in pairs[0][chosen].unique().tolist():
        out[int(classes[c])] = pairs[1][chosen & (pairs[0] == c)].sort().values
    return out


def _standardised(vectors: Tensor, unembed: Tensor, token_sets: Sequence[Tensor]) -> Tensor:
    """(N, C) mean standardised logit of each token set in each vector's projection, without forming ``E v``:
    the projection's mean over the vocabulary is ``v . mean(E)`` and its second moment ``v^T (E^T E / V) v``."""
    e = unembed.double()
    v = vectors.to(e.device).double()
    mean = v @ e.mean(0)
    second = ((v @ (e.T @ e / len(e))) * v).sum(1)
    std = (second - mean**2).clamp_min(1e-30).sqrt()
    union, inverse = torch.unique(torch.cat([t.to(e.device) for t in token_sets]), return_inverse=True)
    logits = v @ e[union].T  # (N, |union|)
    parts = inverse.split([len(t) for t in token_sets])
    scores = torch.stack([logits[:, p].mean(1) for p in parts], 1)
    return ((scores - mean[:, None]) / std[:, None]).float().cpu()


def concept_scores(
    model: Any, concepts: Sequence[Tensor], layers: Sequence[int] | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Every value vector's score for every concept: ``(scores (N, C), layer (N,), index (N,))`` over the
    vectors of ``layers`` (default all). Score = mean standardised logit of the concept's tokens in the vector's
    projection (how many standard deviations above the vector's mean logit it puts them)."""
    concepts = [torch.as_tensor(c, dtype=torch.long).unique() for c in concepts]
    if not concepts or any(len(c) == 0 for c in concepts):
        raise ValueError("every concept needs at least one token id")
    unembed = unembedding(model)
    bad = sorted({int(t) for c in concepts for t in c if not 0 <= int(t) < len(unembed)})
    if bad:
        raise ValueError(f"token ids {bad} are outside the vocabulary (0..{len(unembed) - 1})")
    layers = list(range(n_layers(model))) if layers is None else list(layers)
    scores, layer_ids, index = [], [], []
    for layer in layers:
        vecs = value_vectors(model, layer)
        scores.append(_standardised(vecs, unembed, concepts))
        layer_ids.append(torch.full((len(vecs),), layer, dtype=torch.long))
        index.append(torch.arange(len(vecs)))
    return torch.cat(scores), torch.cat(layer_ids), torch.cat(index)


def find_concept_vectors(
    model: Any,
    concepts: Sequence[Tensor],
    *,
    k: int = 4,
    threshold: float | None = 3.0,
    layers: Sequence[int] | None = None,
) -> list[ConceptVectors]:
    """Per concept, its top-``k`` value vectors by :func:`concept_scores` among those scoring at least
    ``threshold`` (``None``: no threshold); a concept no vector reaches gets an empty :class:`ConceptVectors`."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    scores, layer, index = concept_scores(model, concepts, layers)
    out = []
    for c, tokens in enumerate(concepts):
        top = scores[:, c].topk(min(k, len(scores)))
        pick = top.indices[top.values >= threshold] if threshold is not None else top.indices
        out.append(ConceptVectors(torch.as_tensor(tokens).unique(), layer[pick], index[pick], scores[pick, c]))
    return out


# ---------------------------------------------------------------------------------------------------- change
def top_token_count(vocab_size: int) -> int:
    """The authors' 200 of 32,000 tokens as a share of the vocabulary, at least 10 (and at most all)."""
    return min(vocab_size, max(10, math.ceil(TOP_TOKEN_SHARE * vocab_size)))


def trace_change(
    original: Any, unlearned: Any, found: Sequence[ConceptVectors], *, top_tokens: int | None = None
) -> list[dict[str, float]]:
    """One record per concept vector of ``found`` (located in ``original``): ``cos`` (cosine similarity of the
    vector in the two models), ``norm_ratio`` (``||v_unlearned|| / ||v_original||``), ``score_before`` /
    ``score_after`` (its concept score, each model through its own unembedding), ``score_drop`` (before minus
    after), ``vector_score_drop`` (the same with the original's unembedding for both: what the change of the
    vector alone does) and ``jaccard`` (of the two projections' top-``top_tokens`` token sets; default
    :func:`top_token_count`). ``concept`` is the position of the concept in ``found``."""
    e_o, e_u = unembedding(original), unembedding(unlearned)
    top = top_tokens or top_token_count(len(e_o))
    cache: dict[tuple[int, int], Tensor] = {}

    def vecs(which: int, model: Any, layer: int) -> Tensor:
        if (which, layer) not in cache:
            cache[which, layer] = value_vectors(model, layer).float()
        return cache[which, layer]

    records = []
    for c, cv in enumerate(found):
        if not len(cv):
            continue
        layers, index = cv.layer.tolist(), cv.index.tolist()
        v_o = torch.stack([vecs(0, original, li)[j] for li, j in zip(layers, index)])
        v_u = torch.stack([vecs(1, unlearned, li)[j] for li, j in zip(layers, index)]).to(v_o.device)
        before = _standardised(v_o, e_o, [cv.tokens])[:, 0]
        after = _standardised(v_u, e_u, [cv.tokens])[:, 0]
        after_vector = _standardised(v_u, e_o, [cv.tokens])[:, 0]  # the original's unembedding: the vector's change
        top_o = project(v_o, e_o.float()).topk(top, dim=1).indices
        top_u = project(v_u, e_u.float().to(v_u.device)).topk(top, dim=1).indices
        cos = torch.nn.functional.cosine_similarity(v_o, v_u, dim=1).clamp(max=1.0)
        ratio = v_u.norm(dim=1) / v_o.norm(dim=1)
        for i in range(len(layers)):
            a, b = set(top_o[i].tolist()), set(top_u[i].tolist())
            records.append(
                {
                    "concept": c,
                    "layer": layers[i],
                    "index": index[i],
                    "cos": float(cos[i]),
                    "norm_ratio": float(ratio[i]),
                    "score_before": float(before[i]),
                    "score_after": float(after[i]),
                    "score_drop": float(before[i] - after[i]),
                    "vector_score_drop": float(before[i] - after_vector[i]),
                    "jaccard": len(a & b) / len(a | b),
                }
            )
    return records


def summarize(records: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Means over concept vectors of :func:`trace_change`'s records, plus how many vectors and concepts."""
    out: dict[str, float] = {"n_vectors": len(records), "n_concepts": len({r["concept"] for r in records})}
    for key in ("cos", "norm_ratio", "score_drop", "vector_score_drop", "jaccard"):
        if records:
            out[key] = sum(r[key] for r in records) / len(records)
    return out


def value_vector_cosines(original: Any, unlearned: Any) -> Tensor:
    """Cosine similarity of every value vector (all layers, in order) between two models: the reference for
    how much a method changed the MLPs overall."""
    parts = []
    for layer in range(n_layers(original)):
        a, b = value_vectors(original, layer).float(), value_vectors(unlearned, layer).float()
        parts.append(torch.nn.functional.cosine_similarity(a, b.to(a.device), dim=1).clamp(max=1.0).cpu())
    return torch.cat(parts)


def concept_positions(x: Tensor, tokens: Tensor) -> Tensor:
    """``(N, L - 1)`` bool: the next-token positions of ``x``'s answers (encoded pairs) whose token is one of the
    concept's ``tokens`` (e.g. where an answer names its author)."""
    return x[:, 1, 1:].bool() & torch.isin(x[:, 0, 1:], torch.as_tensor(tokens, device=x.device))


def _causal_lm(model: Any) -> CausalLM:
    lm = model.backbone if isinstance(model, Strategy) else model
    if not isinstance(lm, CausalLM):
        raise TypeError("scoring answers needs a CausalLM backbone (or a strategy with one)")
    return lm


@torch.no_grad()
def concept_activations(
    model: Any, found: ConceptVectors, x: Tensor, *, positions: Tensor | None = None, batch_size: int = 64
) -> Tensor:
    """``(k,)`` mean activation of each concept vector (the coefficient its neuron multiplies it by: the MLP
    output module's input) at the positions that predict the selected next tokens of ``x`` (``positions``
    (N, L - 1), default every answer token). The vector may be intact while its activation is suppressed."""
    lm = _causal_lm(model)
    hf = language_model(lm)
    names = {id(m): n for n, m in hf.named_modules()}
    modules = _mlp_outputs(lm)
    wanted = {layer: names[id(modules[layer])] for layer in found.layer.unique().tolist()}
    total, count = torch.zeros(len(found), dtype=torch.float64), 0
    was_training = lm.training
    lm.eval()
    device = next(lm.parameters()).device
    for i in range(0, len(x), batch_size):
        xb = x[i : i + batch_size]
        mask = (xb[:, 1, 1:] if positions is None else positions[i : i + batch_size]).bool()
        with capture_io(hf, list(wanted.values())) as acts:
            lm.token_logits(xb.to(device))
        for layer, name in wanted.items():
            a = acts[name][0][0][:, :-1][mask.to(device)].double().cpu()  # (M, I): positions that predict a token
            sel = found.layer == layer
            total[sel] += a[:, found.index[sel]].sum(0)
        count += int(mask.sum())
    lm.train(was_training)
    return (total / max(count, 1)).float()


# ---------------------------------------------------------------------------------------------------- ablation
@contextlib.contextmanager
def ablated(model: Any, layer: Tensor | Sequence[int], index: Tensor | Sequence[int], mode: str = "zero") -> Iterator:
    """Within the block, the value vectors at (``layer``, ``index``) are zero (``mode="zero"``) or their layer's
    mean value vector (``"mean"``); the weights are restored on exit. With LoRA the *effective* vector is set
    (the base weight absorbs minus the adapter's delta)."""
    if mode not in ("zero", "mean"):
        raise ValueError(f"mode={mode!r} is invalid; valid choices: zero, mean")
    modules = _mlp_outputs(model)
    layer, index = torch.as_tensor(layer, dtype=torch.long), torch.as_tensor(index, dtype=torch.long)
    saved = []
    with torch.no_grad():
        for li in layer.unique().tolist():
            module = modules[li]
            base = getattr(module, "base_layer", module).weight
            rows = base if _transposed(module) else base.T  # a view: writing rows writes the weight
            j = index[layer == li].to(base.device)
            effective = _rows(module)
            target = torch.zeros_like(rows[j]) if mode == "zero" else effective.mean(0).expand(len(j), -1)
            saved.append((rows, j, rows[j].clone()))
            rows[j] = (target - (effective[j] - rows[j])).to(rows.dtype)  # effective - base = the LoRA delta
    try:
        yield
    finally:
        with torch.no_grad():
            for rows, j, old in saved:
                rows[j] = old


def random_locations(
    model: Any, layer: Tensor, index: Tensor, generator: torch.Generator, exclude: bool = True
) -> tuple[Tensor, Tensor]:
    """As many random value vectors per layer as (``layer``, ``index``) has there (the control of an ablation),
    drawn without replacement and, with ``exclude``, never one of (``layer``, ``index``)."""
    out_l, out_j = [], []
    for li in layer.unique().tolist():
        size = value_vectors(model, li).shape[0]
        taken = index[layer == li]
        pool = torch.ones(size, dtype=torch.bool)
        if exclude:
            pool[taken] = False
        candidates = pool.nonzero()[:, 0]
        pick = candidates[torch.randperm(len(candidates), generator=generator)[: len(taken)]]
        out_l.append(torch.full((len(pick),), li, dtype=torch.long))
        out_j.append(pick)
    return torch.cat(out_l), torch.cat(out_j)


@torch.no_grad()
def _mean_logprob(lm: CausalLM, x: Tensor, positions: Tensor | None, batch_size: int) -> Tensor:
    """Per sample: the mean log-probability of its selected next tokens (default: every answer token)."""
    was_training = lm.training
    lm.eval()
    device = next(lm.parameters()).device
    out = []
    for i in range(0, len(x), batch_size):
        xb = x[i : i + batch_size].to(device)
        lp = lm.answer_token_logprobs(xb).float().cpu()
        mask = (xb[:, 1, 1:].cpu().bool() if positions is None else positions[i : i + batch_size].bool()).float()
        out.append((lp * mask).sum(1) / mask.sum(1).clamp_min(1))
    lm.train(was_training)
    return torch.cat(out) if out else torch.zeros(0)


def _with_positions(x: Tensor, positions: Tensor | None) -> tuple[Tensor, Tensor | None]:
    """The samples with at least one selected position, and their positions."""
    if positions is None:
        return x, None
    keep = positions.bool().any(1)
    return x[keep], positions.bool()[keep]


def ablation_effect(
    model: Any,
    found: ConceptVectors,
    x: Tensor,
    *,
    positions: Tensor | None = None,
    control_x: Tensor | None = None,
    control_positions: Tensor | None = None,
    n_random: int = 5,
    mode: str = "zero",
    seed: int = 0,
    batch_size: int = 64,
) -> dict[str, float]:
    """How much ablating ``found`` lowers the concept's answers, against ablating random value vectors.

    ``x``: the concept's encoded question-answer pairs; ``positions`` (N, L - 1): which next tokens count
    (e.g. where the answer names the concept; default every answer token). Drops are in nats per token of the
    mean log-probability (before minus after ablation), averaged over the samples: ``concept_drop`` (the
    concept vectors ablated), ``random_drop`` / ``random_drop_std`` (mean / std over ``n_random`` draws of as
    many random vectors of the same layers, :func:`random_locations`), and on ``control_x`` (other concepts'
    pairs) ``control_drop`` under the concept ablation. ``logp_before``: the concept's mean log-probability."""
    lm = _causal_lm(model)
    if not len(found):
        raise ValueError("no concept vector to ablate (found is empty)")
    x, pos = _with_positions(x, positions)
    if not len(x):
        raise ValueError("no sample has a selected position (positions is all False)")
    before = _mean_logprob(lm, x, pos, batch_size)
    with ablated(lm, found.layer, found.index, mode):
        after = _mean_logprob(lm, x, pos, batch_size)
    control = None
    if control_x is not None and len(_with_positions(control_x, control_positions)[0]):
        cx, cpos = _with_positions(control_x, control_positions)
        c_before = _mean_logprob(lm, cx, cpos, batch_size)
        with ablated(lm, found.layer, found.index, mode):
            control = float((c_before - _mean_logprob(lm, cx, cpos, batch_size)).mean())
    gen = torch.Generator().manual_seed(seed)
    drops = []
    for _ in range(n_random):
        rl, rj = random_locations(lm, found.layer, found.index, gen)
        with ablated(lm, rl, rj, mode):
            drops.append(float((before - _mean_logprob(lm, x, pos, batch_size)).mean()))
    out = {
        "k": len(found),
        "n_samples": len(x),
        "logp_before": float(before.mean()),
        "concept_drop": float((before - after).mean()),
    }
    if drops:
        t = torch.tensor(drops)
        out["random_drop"] = float(t.mean())
        out["random_drop_std"] = float(t.std()) if len(t) > 1 else 0.0
    if control is not None:
        out["control_drop"] = control
    return out
