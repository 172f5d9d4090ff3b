"""Two seeded plain-text corpora for pre-training a small causal LM and then fine-tuning it elsewhere
(``scenario=lm_corpus``): the base-corpus / fine-tuning protocol of "Scaling Laws for Forgetting When
Fine-Tuning Large Language Models" (Kalajdzievski 2024) on a CPU.

* ``base`` — short biographies of a fixed world: ``n_people`` people, each with a home town, a job, a pet, a
  favourite food and a birth year, and ``n_towns`` towns with their landscape and weather; every document is a
  few sentences about one person. A fraction ``base_recipes`` of the documents are recipes of ``n_dishes``
  dishes (ingredients, quantity, cooking method, time, serving): the model knows the register it will be
  fine-tuned in, as a pre-trained LLM knows instruction data. The pre-training corpus; forgetting is measured on
  its held-out documents.
* ``finetune`` — recipes of ``n_dishes`` *other* dishes: new facts in a known register (the downstream task).

Both corpora come from ``corpus_seed`` alone, so a pre-training run and the fine-tuning runs built on its
checkpoint see the same facts whatever their run ``seed`` (which only orders the training documents). Held-out
documents are new combinations of the same facts, never a training document.

``train`` picks the corpus the learn events train on. The events end at the cumulative optimiser steps
``steps`` (event ``k`` holds ``(steps[k] - steps[k-1]) * batch_size`` documents, drawn through seeded epochs of
the training corpus; one pass each, ``trainer.max_epochs=1``), so an evaluator that measures after every event
(``lm_loss``) sees the model at each of those steps of one continuous training run. Each event's test split is
the first ``n_test`` held-out documents of the trained corpus.

A document is encoded as ``[bos] tokens [eos]`` with the loss on every token after ``<bos>`` (the causal-LM
loss; same ``(N, 2, L)`` layout as :func:`clframe.scenarios.text_io.encode_pairs`). ``stream.extras``:
``tokenizer`` and ``text_sets`` = ``{"base": ..., "finetune": ...}``, the held-out documents of both corpora
(what ``evaluators=[{name: lm_loss}]`` measures).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

import torch

from clframe.errors import ConfigError
from clframe.registry import register_scenario
from clframe.scenarios import text_io
from clframe.stream import Experience, Stream, TensorData

CORPORA = ("base", "finetune")
SYLLABLES = ("ka", "lo", "mi", "ra", "ten", "vo", "sha", "dur", "el", "bri", "no", "ga", "fi", "ze", "mor", "tu")
JOBS = ("baker", "teacher", "farmer", "painter", "doctor", "sailor", "miner", "weaver", "judge", "singer",
        "tailor", "hunter", "potter", "driver", "guard", "writer")  # fmt: skip
ANIMALS = ("cat", "dog", "horse", "goat", "parrot", "rabbit", "owl", "donkey")
COLOURS = ("black", "white", "brown", "grey", "red", "golden")
FOODS = ("bread", "rice", "fish", "soup", "apples", "cheese", "beans", "honey", "plums", "onions")
LANDSCAPES = ("river", "mountains", "sea", "forest", "lake", "desert")
WEATHER = ("rainy", "windy", "sunny", "foggy", "cold", "warm")
INGREDIENTS = ("flour", "butter", "sugar", "milk", "eggs", "salt", "pepper", "garlic", "carrots", "potatoes",
               "rice", "fish", "cheese", "beans", "honey", "onions")  # fmt: skip
UNITS = ("cups", "spoons", "handfuls", "pinches")
METHODS = ("bake", "boil", "fry", "stir", "roast", "steam")
SERVINGS = ("hot", "cold", "with bread", "with rice", "in a bowl", "on a plate")
DISH_KINDS = ("stew", "pie", "cake", "salad", "porridge", "bread", "soup", "tart")


def _names(rng: random.Random, n: int, parts: tuple[int, int], suffixes: Sequence[str] = ("",)) -> list[str]:
    """``n`` distinct capitalised names of 2-3 syllables (and a suffix), from ``rng``."""
    out: list[str] = []
    while len(out) < n:
        name = "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(*parts))) + rng.choice(suffixes)
        if name.capitalize() not in out:
            out.append(name.capitalize())
    return out


def base_corpus(n_people: int, n_towns: int, rng: random.Random):
    """``sample()`` → one biography document (3 sentences about one person, sometimes one about their town)."""
    towns = _names(rng, n_towns, (2, 2), ("vik", "ton", "dal", "mar"))
    town = {t: (rng.choice(LANDSCAPES), rng.choice(WEATHER)) for t in towns}
    people = [
        {
            "name": name,
            "town": rng.choice(towns),
            "born": rng.choice(towns),
            "job": rng.choice(JOBS),
            "pet": (rng.choice(COLOURS), rng.choice(ANIMALS)),
            "food": rng.choice(FOODS),
            "year": rng.randint(1900, 1999),
        }
        for name in _names(rng, n_people, (2, 3))
    ]
    templates = (
        lambda p: f"{p['name']} lives in {p['town']}.",
        lambda p: f"{p['name']} works as a {p['job']}.",
        lambda p: f"{p['name']} has a {p['pet'][0]} {p['pet'][1]}.",
        lambda p: f"{p['name']} likes to eat {p['food']}.",
        lambda p: f"The {p['job']} from {p['town']} is called {p['name']}.",
        lambda p: f"In {p['town']}, {p['name']} walks the {p['pet'][1]} every day.",
        lambda p: f"{p['name']} was born in {p['born']} in {p['year']}.",
    )

    def sample(r: random.Random) -> str:
        p = r.choice(people)
        sentences = [t(p) for t in r.sample(templates, 3)]
        if r.random() < 0.5:
            land, weather = town[p["town"]]
            sentences.append(f"{p['town']} lies near the {land} and is often {weather}.")
        return " ".join(sentences)

    return sample


def make_dishes(n: int, rng: random.Random) -> list[dict]:
    """``n`` dishes with distinct names and their recipe facts."""
    dishes = []
    for name in _names(rng, n, (2, 3)):
        first, second = rng.sample(INGREDIENTS, 2)
        dishes.append(
            {
                "name": f"{name} {rng.choice(DISH_KINDS)}",
                "first": first,
                "second": second,
                "amount": rng.randint(1, 5),
                "unit": rng.choice(UNITS),
                "method": rng.choice(METHODS),
                "minutes": 5 * rng.randint(1, 12),
                "serving": rng.choice(SERVINGS),
            }
        )
    return dishes


def recipe_corpus(dishes: list[dict]):
    """``sample()`` → one recipe document (3 of 4 sentences about one of ``dishes``)."""
    templates = (
        lambda d: f"Recipe for {d['name']}: take {d['amount']} {d['unit']} of {d['first']}.",
        lambda d: f"Mix the {d['first']} with the {d['second']} and {d['method']} for {d['minutes']} minutes.",
        lambda d: f"To make {d['name']}, you need {d['first']} and {d['second']}.",
        lambda d: f"{d['name']} is served {d['serving']}.",
    )

    def sample(r: random.Random) -> str:
        d = r.choice(dishes)
        return " ".join(t(d) for t in r.sample(templates, 3))

    return sample


def mixture(first, second, p_second: float):
    """``sample()`` from ``second`` with probability ``p_second``, else from ``first``."""
    return lambda r: second(r) if r.random() < p_second else first(r)


def documents(sample, n_train: int, n_heldout: int, rng: random.Random) -> tuple[list[str], list[str]]:
    """``n_train`` training documents and ``n_heldout`` distinct held-out documents that are not training ones."""
    train = [sample(rng) for _ in range(n_train)]
    seen, heldout = set(train), []
    for _ in range(200 * n_heldout):
        if len(heldout) == n_heldout:
            break
        doc = sample(rng)
        if doc not in seen:
            seen.add(doc)
            heldout.append(doc)
    if len(heldout) < n_heldout:
        raise ConfigError("scenario.n_heldout", n_heldout, hint="the corpus has too few documents not in training")
    return train, heldout


def encode_documents(tokenizer, texts: Sequence[str], max_length: int) -> torch.Tensor:
    """``(N, 2, max_length)``: row 0 ``[bos] tokens [eos]`` right-padded, row 1 the loss mask (every token after
    ``<bos>``, eos included: the causal-LM loss)."""
    bos, eos, pad = tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id
    if None in (bos, eos, pad):
        raise ConfigError("scenario.tokenizer", type(tokenizer).__name__, hint="it needs bos, eos and pad tokens")
    enc = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    out = torch.zeros(len(enc), 2, max_length, dtype=torch.long)
    out[:, 0] = pad
    for i, tokens in enumerate(enc):
        ids = [bos, *tokens, eos]
        if len(ids) > max_length:
            raise ConfigError("scenario.max_length", max_length, hint=f"document {i} needs {len(ids)} tokens")
        out[i, 0, : len(ids)] = torch.tensor(ids)
        out[i, 1, 1 : len(ids)] = 1
    return out


def _data(x: torch.Tensor, ids: torch.Tensor | None = None) -> TensorData:
    n = len(x)
    ids = torch.arange(n) if ids is None else ids
    return TensorData(x, torch.zeros(n, dtype=torch.long), ids, torch.zeros(n, dtype=torch.long))


def _positive_int(key: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(key, value, "a positive integer")
    return value


def check_steps(steps) -> list[int]:
    """Cumulative optimiser steps at which the learn events end: positive and increasing."""
    steps = list(steps) if isinstance(steps, (list, tuple)) or hasattr(steps, "__iter__") else [steps]
    ok = steps and all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in steps)
    if not ok or any(b <= a for a, b in zip(steps, steps[1:])):
        raise ConfigError("scenario.steps", steps, "increasing positive integers, e.g. [25, 50, 100, 200]")
    return steps


@register_scenario("lm_corpus")
def lm_corpus(
    *,
    train: str = "finetune",
    steps: Sequence[int] = (25, 50, 100, 200, 400),
    batch_size: int = 16,
    n_people: int = 60,
    n_towns: int = 12,
    n_dishes: int = 60,
    base_recipes: float = 0.25,
    n_base_docs: int = 4000,
    n_finetune_docs: int = 2000,
    n_heldout: int = 256,
    n_test: int = 32,
    corpus_seed: int = 0,
    tokenizer: str | None = "train",
    vocab_size: int = 640,
    max_length: int = 64,
    seed: int = 0,
) -> Stream:
    """Learn events on the ``train`` corpus (``base`` or ``finetune``) ending at the cumulative optimiser steps
    ``steps`` (for batches of ``batch_size``: set it to the strategy's); held-out documents of both corpora in
    ``stream.extras["text_sets"]``. ``tokenizer``: ``train`` (a BPE tokenizer trained on both corpora; also
    ``null``) or the folder of the checkpoint being fine-tuned (``backbone.path``)."""
    if train not in CORPORA:
        raise ConfigError("scenario.train", train, CORPORA)
    steps = check_steps(steps)
    for key, value in (("batch_size", batch_size), ("n_people", n_people), ("n_towns", n_towns),
                       ("n_dishes", n_dishes), ("n_base_docs", n_base_docs), ("n_finetune_docs", n_finetune_docs),
                       ("n_heldout", n_heldout), ("n_test", n_test)):  # fmt: skip
        _positive_int(f"scenario.{key}", value)
    if n_test > n_heldout:
        raise ConfigError("scenario.n_test", n_test, f"at most scenario.n_heldout={n_heldout}")
    if isinstance(base_recipes, bool) or not isinstance(base_recipes, (int, float)) or not 0 <= base_recipes < 1:
        raise ConfigError("scenario.base_recipes", base_recipes, "a fraction in [0, 1)")
    rng = random.Random(corpus_seed)
    biographies = base_corpus(n_people, n_towns, rng)
    dishes = make_dishes(2 * n_dishes, rng)  # the base corpus's dishes, then the fine-tuning corpus's (new) ones
    base = mixture(biographies, recipe_corpus(dishes[:n_dishes]), base_recipes)
    corpora = {
        "base": documents(base, n_base_docs, n_heldout, rng),
        "finetune": documents(recipe_corpus(dishes[n_dishes:]), n_finetune_docs, n_heldout, rng),
    }
    if tokenizer in ("train", None):  # null: no checkpoint folder to read it from (the presets' default)
        tok = text_io.train_tokenizer([d for pair in corpora.values() for part in pair for d in part], vocab_size)
    elif Path(tokenizer).expanduser().is_dir():
        tok = text_io.load_tokenizer(Path(tokenizer).expanduser())
    else:
        raise ConfigError("scenario.tokenizer", tokenizer, ["train", "a local tokenizer / checkpoint folder"])
    encoded = {k: (encode_documents(tok, tr, max_length), encode_documents(tok, ho, max_length))
               for k, (tr, ho) in corpora.items()}  # fmt: skip
    train_x, heldout_x = encoded[train]
    test = _data(heldout_x[:n_test])
    # the documents of every event, through seeded epochs of the training corpus (the run's seed orders them)
    gen = torch.Generator().manual_seed(seed)
    need = steps[-1] * batch_size
    order = torch.cat([torch.randperm(len(train_x), generator=gen) for _ in range(-(-need // len(train_x)))])
    events, start = [], 0
    for k, (prev, end) in enumerate(zip([0, *steps], steps)):
        idx = order[start : start + (end - prev) * batch_size]
        start += len(idx)
        events.append(Experience(k, "learn", _data(train_x[idx], idx), test, [0], name=f"{train}_to_step_{end}"))
    extras = {"tokenizer": tok, "text_sets": {k: _data(ho) for k, (_, ho) in encoded.items()}}
    return Stream(f"lm_corpus_{train}", events, 1, (2, max_length), "class", extras)
