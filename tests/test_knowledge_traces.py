"""Parametric knowledge traces (ConceptVectors, Hong et al. 2024): value vectors read the way each architecture
stores them (checked against what the MLP actually computes, LoRA merged in), projections equal the LM head, a
planted concept vector is found, trace changes have the defined values, ablating a trained model's concept
vectors hurts its concept far more than random vectors, and the tofu evaluator reports the trace change."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from clframe.registry import BACKBONES, EVALUATORS, SCENARIOS, STRATEGIES, load_plugins
from clframe.unlearning import knowledge_traces as K
from tests.test_language_models import TINY_SCENARIO

VOCAB, HIDDEN, INTER = 40, 32, 48


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _tiny(architecture: str, seed: int = 0):
    torch.manual_seed(seed)
    if architecture == "llama":
        cfg = LlamaConfig(
            vocab_size=VOCAB,
            hidden_size=HIDDEN,
            intermediate_size=INTER,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
            max_position_embeddings=16,
            tie_word_embeddings=False,
        )
        return LlamaForCausalLM(cfg).eval()
    cfg = GPT2Config(vocab_size=VOCAB, n_embd=HIDDEN, n_inner=INTER, n_layer=2, n_head=2, n_positions=16)
    return GPT2LMHeadModel(cfg).eval()


def _mlp_out(model, layer):
    hf = K.language_model(model)
    if hasattr(hf, "transformer"):
        return hf.transformer.h[layer].mlp.c_proj
    return hf.model.layers[layer].mlp.down_proj


def _mlp_io(model, layer, ids):
    """(input activations, output) of layer ``layer``'s MLP output projection on ``ids``."""
    seen = {}
    module = _mlp_out(model, layer)
    hooks = [
        module.register_forward_pre_hook(lambda _m, inp: seen.__setitem__("in", inp[0])),
        module.register_forward_hook(lambda _m, _i, out: seen.__setitem__("out", out)),
    ]
    with torch.no_grad():
        model(input_ids=ids)
    for h in hooks:
        h.remove()
    return seen["in"], seen["out"]


IDS = torch.randint(0, VOCAB, (3, 7), generator=torch.Generator().manual_seed(1))


# ---------------------------------------------------------------- enumeration and projection
@pytest.mark.parametrize("architecture", ["llama", "gpt2"])
def test_value_vectors_are_what_each_neuron_adds_to_the_residual_stream(architecture):
    """Layout (Llama: columns of down_proj.weight; GPT-2: rows of the transposed Conv1D weight) and function:
    the MLP output is the activation-weighted sum of the value vectors (+ GPT-2's bias)."""
    model = _tiny(architecture)
    for layer in range(2):
        vecs = K.value_vectors(model, layer)
        assert vecs.shape == (INTER, HIDDEN)
        module = _mlp_out(model, layer)
        manual = module.weight.T if architecture == "llama" else module.weight  # Conv1D weight is (in, out)
        assert torch.equal(vecs, manual)
        act, out = _mlp_io(model, layer, IDS)
        bias = getattr(module, "bias", None)
        assert torch.allclose(act @ vecs + (0 if bias is None else bias), out, atol=1e-6)


@pytest.mark.parametrize("architecture", ["llama", "gpt2"])
def test_with_lora_the_value_vectors_are_the_merged_weights(architecture):
    from peft import LoraConfig, get_peft_model

    target = "down_proj" if architecture == "llama" else "c_proj"
    peft_model = get_peft_model(_tiny(architecture), LoraConfig(r=4, lora_alpha=8, target_modules=[target]))
    torch.manual_seed(2)
    for name, p in peft_model.named_parameters():
        if "lora_B" in name:
            p.data.normal_()  # B starts at zero: make the delta visible
    merged = copy.deepcopy(peft_model).merge_and_unload()
    for layer in range(2):
        vecs = K.value_vectors(peft_model, layer)
        assert not torch.allclose(vecs, K.value_vectors(_tiny(architecture), layer), atol=1e-3)  # the delta counts
        assert torch.allclose(vecs, K.value_vectors(merged, layer), atol=1e-6)
        act, out = _mlp_io(peft_model, layer, IDS)
        bias = getattr(_mlp_out(merged, layer), "bias", None)
        assert torch.allclose(act @ vecs + (0 if bias is None else bias), out, atol=1e-5)
    with K.ablated(peft_model, torch.tensor([1, 1]), torch.tensor([3, 8])):  # the effective vectors are zeroed
        vecs = K.value_vectors(peft_model, 1)
        assert vecs[[3, 8]].abs().max() < 1e-6 and torch.allclose(vecs[4], K.value_vectors(merged, 1)[4], atol=1e-6)
        act, out = _mlp_io(peft_model, 1, IDS)
        assert torch.allclose(act @ vecs + (0 if bias is None else bias), out, atol=1e-5)
    assert torch.allclose(K.value_vectors(peft_model, 1), K.value_vectors(merged, 1), atol=1e-6)  # restored


@pytest.mark.parametrize("architecture", ["llama", "gpt2"])
def test_the_projection_is_the_lm_head_applied_to_the_vector(architecture):
    model = _tiny(architecture)
    vecs = K.value_vectors(model, 1)
    with torch.no_grad():
        assert torch.allclose(K.project(vecs, K.unembedding(model)), model.lm_head(vecs), atol=1e-6)


def test_concept_scores_are_mean_standardised_logits_of_the_full_projection():
    """The Gram-matrix shortcut against the explicit (N, V) projection, population standard deviation."""
    model = _tiny("llama")
    concepts = [torch.tensor([3, 7]), torch.tensor([11]), torch.tensor([1, 2, 38, 39])]
    scores, layer, index = K.concept_scores(model, concepts)
    assert scores.shape == (2 * INTER, 3) and layer.tolist() == [0] * INTER + [1] * INTER
    proj = K.project(torch.cat([K.value_vectors(model, i) for i in range(2)]), K.unembedding(model))
    z = (proj - proj.mean(1, keepdim=True)) / proj.std(1, unbiased=False, keepdim=True)
    expected = torch.stack([z[:, c].mean(1) for c in concepts], 1)
    assert torch.allclose(scores, expected, atol=1e-5)
    assert torch.equal(index, torch.cat([torch.arange(INTER)] * 2))


def test_a_planted_vector_that_writes_a_concepts_tokens_is_found_first():
    model = _tiny("llama")
    tokens = torch.tensor([5, 9])
    e = K.unembedding(model)
    indicator = torch.zeros(VOCAB, 1)
    indicator[tokens] = 1.0
    with torch.no_grad():  # a vector whose projection is (close to) the indicator of the concept's tokens
        model.model.layers[1].mlp.down_proj.weight[:, 13] = torch.linalg.lstsq(e, indicator).solution[:, 0]
    found = K.find_concept_vectors(model, [tokens, torch.tensor([20])], k=3, threshold=3.0)
    assert (int(found[0].layer[0]), int(found[0].index[0])) == (1, 13)
    assert found[0].score[0] > 3 and torch.all(found[0].score[:-1] >= found[0].score[1:])
    assert torch.all(found[1].score >= 3.0)  # the threshold holds (possibly no vector at all)
    top = K.project(K.value_vectors(model, 1)[13:14], e).topk(2).indices[0]
    assert set(top.tolist()) == {5, 9}


def test_subject_tokens_are_the_tokens_naming_each_class_in_its_questions():
    # prompts: [bos, template..., name tokens..., answer...]; ids 0 = pad, 1 = bos; answer mask 1 on the answer
    rows = [([1, 10, 11, 20, 21, 12], 0), ([1, 13, 20, 21, 12], 0), ([1, 10, 11, 22, 12], 1), ([1, 13, 22, 23, 12], 1)]
    x = torch.zeros(len(rows), 2, 9, dtype=torch.long)
    for i, (ids, _) in enumerate(rows):
        x[i, 0, : len(ids)] = torch.tensor(ids)
        x[i, 0, len(ids) : len(ids) + 2] = torch.tensor([30, 2])  # answer + eos
        x[i, 1, len(ids) : len(ids) + 2] = 1
    y = torch.tensor([c for _, c in rows])
    names = K.subject_tokens(x, y, exclude=[0, 1, 2], max_share=0.5, min_frac=0.75)
    assert {c: v.tolist() for c, v in names.items()} == {0: [20, 21], 1: [22]}  # 10, 13: in both classes' prompts
    names = K.subject_tokens(x, y, exclude=[0, 1, 2], max_share=0.5, min_frac=0.5)
    assert names[1].tolist() == [22, 23]  # 23 is in half of class 1's prompts
    assert 12 in K.subject_tokens(x, y, exclude=[0, 1, 2], max_share=1.0, min_frac=1.0)[0].tolist()


# ---------------------------------------------------------------- change between two models
def test_trace_change_is_exact_for_identical_scaled_and_flipped_vectors():
    original = _tiny("llama")
    found = K.find_concept_vectors(original, [torch.tensor([4, 8]), torch.tensor([30])], k=3, threshold=None)
    same = K.trace_change(original, copy.deepcopy(original), found)
    assert len(same) == 6 and {r["concept"] for r in same} == {0, 1}
    for r in same:
        assert r["cos"] == pytest.approx(1.0, abs=1e-6) and r["norm_ratio"] == pytest.approx(1.0, abs=1e-6)
        assert r["score_drop"] == pytest.approx(0.0, abs=1e-5) and r["jaccard"] == 1.0
    changed = copy.deepcopy(original)
    l0, j0 = int(found[0].layer[0]), int(found[0].index[0])
    l1, j1 = next((int(la), int(j)) for la, j in zip(found[1].layer, found[1].index) if (int(la), int(j)) != (l0, j0))
    with torch.no_grad():
        changed.model.layers[l0].mlp.down_proj.weight[:, j0] *= 2.0  # scaled
        changed.model.layers[l1].mlp.down_proj.weight[:, j1] *= -1.0  # flipped
    records = {(r["layer"], r["index"], r["concept"]): r for r in K.trace_change(original, changed, found)}
    scaled, flipped = records[l0, j0, 0], records[l1, j1, 1]
    assert scaled["cos"] == pytest.approx(1.0, abs=1e-6) and scaled["norm_ratio"] == pytest.approx(2.0, rel=1e-6)
    assert scaled["score_drop"] == pytest.approx(0.0, abs=1e-5)  # standardised logits do not see the scale
    assert scaled["jaccard"] == 1.0
    assert flipped["cos"] == pytest.approx(-1.0, abs=1e-6) and flipped["norm_ratio"] == pytest.approx(1.0, rel=1e-6)
    assert flipped["score_drop"] == pytest.approx(2 * flipped["score_before"], rel=1e-5)
    assert flipped["vector_score_drop"] == pytest.approx(flipped["score_drop"], rel=1e-5)  # same unembedding
    summary = K.summarize(list(records.values()))
    assert summary["n_vectors"] == 6 and summary["n_concepts"] == 2
    assert summary["cos"] == pytest.approx(sum(r["cos"] for r in records.values()) / 6)
    cos_all = K.value_vector_cosines(original, changed)
    assert cos_all.shape == (2 * INTER,) and int((cos_all < 0.999).sum()) == 1  # only the flipped vector turned
    assert float(cos_all[l1 * INTER + j1]) == pytest.approx(-1.0, abs=1e-6)


def test_ablation_restores_the_weights_and_mean_mode_sets_the_layer_mean():
    model = _tiny("gpt2")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    layer, index = torch.tensor([0, 1, 1]), torch.tensor([2, 5, 7])
    mean = K.value_vectors(model, 1).mean(0).clone()
    with K.ablated(model, layer, index, "mean"):
        vecs = K.value_vectors(model, 1)
        assert torch.allclose(vecs[5], mean) and torch.allclose(vecs[7], mean)
        assert not torch.allclose(vecs[6], mean)
    with K.ablated(model, layer, index):
        assert torch.count_nonzero(K.value_vectors(model, 0)[2]) == 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    gen = torch.Generator().manual_seed(0)
    rl, rj = K.random_locations(model, layer, index, gen)
    assert sorted(rl.tolist()) == [0, 1, 1] and not {(1, 5), (1, 7), (0, 2)} & set(zip(rl.tolist(), rj.tolist()))


# ---------------------------------------------------------------- a trained model


@pytest.fixture(scope="module")
def trained():
    """A 2-layer Llama-style LM (hidden 32) that has memorised 8 authors x 4 questions + 8 world facts."""
    load_plugins(())
    stream = SCENARIOS.build(TINY_SCENARIO, seed=0)
    torch.manual_seed(0)
    node = {"name": "causal_lm", "hidden_size": 32, "layers": 2, "heads": 2}
    bb = BACKBONES.build(node, input_shape=stream.input_shape, tokenizer=stream.extras["tokenizer"])
    model = STRATEGIES.build({"name": "naive"}, backbone=bb, n_classes=stream.n_classes, setting=stream.setting)
    x = stream.learn_experiences[0].train.x
    x = x[:, :, : int((x[:, 0] != bb.pad_id).sum(1).max())]  # padding off: faster
    opt = torch.optim.AdamW(bb.parameters(), lr=1e-2)
    for _ in range(120):  # full batch
        loss = -bb.answer_token_logprobs(x).sum() / x[:, 1, 1:].sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        assert bb.answer_correct(x).float().mean() > 0.9
    return stream, model


def _names(stream, model):
    data = stream.learn_experiences[0].train
    authors = data.y < TINY_SCENARIO["n_authors"]
    names = K.subject_tokens(data.x[authors], data.y[authors], exclude=model.backbone.tokenizer.all_special_ids)
    return data.x[authors], data.y[authors], names


def test_subject_tokens_of_the_fictitious_authors_are_their_names(trained):
    from clframe.scenarios.text_corpus import fictitious_authors

    stream, model = trained
    _, _, names = _names(stream, model)
    corpus = fictitious_authors(8, 4, 8, 4, seed=0)
    tok = model.backbone.tokenizer
    assert {c: set(v.tolist()) for c, v in names.items()} == {
        i: set(K.text_tokens(tok, a["name"]).tolist()) for i, a in enumerate(corpus.authors)
    }


def test_ablating_concept_vectors_hurts_the_concept_far_more_than_random_vectors(trained):
    """Each author's 4 name vectors zeroed: the log-probability of the author's name in its own answers drops
    by far more than with 4 random value vectors of the same layers, and far more than other authors' names."""
    stream, model = trained
    x, y, names = _names(stream, model)
    classes = sorted(names)
    found = K.find_concept_vectors(model, [names[c] for c in classes], k=4, threshold=None)
    any_name = K.concept_positions(x, torch.cat(list(names.values())))
    effects = []
    for c, f in zip(classes, found):
        own = y == c
        pos = K.concept_positions(x, f.tokens)
        effects.append(
            K.ablation_effect(model, f, x[own], positions=pos[own], control_x=x[~own], control_positions=any_name[~own])
        )
    mean = {k: sum(e[k] for e in effects) / len(effects) for k in ("concept_drop", "random_drop", "control_drop")}
    assert mean["concept_drop"] > 0.02  # nats per name token
    assert mean["concept_drop"] > 10 * mean["random_drop"]
    assert mean["concept_drop"] > 3 * mean["control_drop"]
    acts = K.concept_activations(model, found[0], x[y == classes[0]])
    assert acts.shape == (4,) and torch.isfinite(acts).all()


def test_the_tofu_evaluator_reports_the_trace_change_and_leaves_the_other_metrics_alone(trained):
    stream, model = trained
    exp = next(e for e in stream.experiences if e.kind == "forget")
    kwargs = {"name": "tofu", "oracle": False, "generation": False, "cka": False, "probe": False}
    plain = EVALUATORS.build(kwargs)
    with_traces = EVALUATORS.build({**kwargs, "traces": True, "trace_k": 2, "trace_threshold": 2.0})
    unlearned = copy.deepcopy(model)
    forgotten = sorted(set(exp.forget.y.tolist()))
    _, _, names = _names(stream, model)
    found = K.find_concept_vectors(model, [names[c] for c in forgotten], k=2, threshold=2.0)
    with torch.no_grad():  # flip the forgotten authors' concept vectors: cosine -1 exactly
        for f in found:
            for layer, j in zip(f.layer.tolist(), f.index.tolist()):
                weight = unlearned.backbone.model.model.layers[layer].mlp.down_proj.weight
                weight[:, j] = -model.backbone.model.model.layers[layer].mlp.down_proj.weight[:, j]
    models = {"unlearn": unlearned, "original": model}
    a = plain.measure(models, stream, exp, torch.device("cpu"))
    b = with_traces.measure(models, stream, exp, torch.device("cpu"))
    assert {k: a[k] for k in a} == {k: b[k] for k in a}  # bit for bit
    n_found = sum(len(f) for f in found)
    assert b["unlearn/trace_n_concepts"] == len(forgotten) and b["unlearn/trace_n_vectors"] == n_found > 0
    assert b["unlearn/trace_cos"] == pytest.approx(-1.0, abs=1e-6)
    assert b["unlearn/trace_norm_ratio"] == pytest.approx(1.0, abs=1e-6)
    assert b["unlearn/trace_score_drop"] > 4.0  # each score s >= 2 becomes -s
    flipped = len({(int(la), int(j)) for f in found for la, j in zip(f.layer, f.index)})
    total = 2 * 4 * 32  # layers x intermediate (4 x hidden)
    assert b["unlearn/trace_cos_all"] == pytest.approx((total - 2 * flipped) / total, abs=1e-6)
    assert b["unlearn/retain_trace_n_concepts"] == TINY_SCENARIO["n_authors"] - len(forgotten)
    assert set(b) - set(a) == {
        f"unlearn/{g}trace_{k}"
        for g in ("", "retain_")
        for k in ("cos", "norm_ratio", "score_drop", "vector_score_drop", "jaccard", "n_vectors", "n_concepts")
    } | {"unlearn/trace_cos_all", "unlearn/trace_act_ratio", "unlearn/retain_trace_act_ratio"}
    same = with_traces._traces({"unlearn": copy.deepcopy(model), "original": model}, stream, exp)
    for prefix in ("unlearn/trace_", "unlearn/retain_trace_"):
        assert same[f"{prefix}cos"] == pytest.approx(1.0, abs=1e-6) and same[f"{prefix}act_ratio"] == 1.0
        assert same[f"{prefix}score_drop"] == pytest.approx(0.0, abs=1e-5) and same[f"{prefix}jaccard"] == 1.0
