"""Text streams for causal language models: fictitious authors (generated), TOFU files, your own JSONL.

Three scenarios build the same kind of stream::

    scenario=fictitious_authors   # a seeded TOFU-like corpus (clframe.scenarios.text_corpus), nothing to download
    scenario=tofu scenario.path=/data/TOFU scenario.forget_percent=5   # the TOFU JSON files, from a local folder
    scenario=text_jsonl scenario.path=my.jsonl   # {"prompt", "answer", "stage", "forget", "group"} per line

Learn events are fine-tuning stages; one forget event after the last stage names the authors (or
records) to forget, built by :func:`clframe.scenarios.unlearning.insert_requests` exactly as for vision
streams, so the retrain oracle is the same stream without them. A sample's class is its author
(group): forgetting an author is forgetting a class. Inputs are (N, 2, L) token ids and answer masks
(``clframe.scenarios.text_io.encode_pairs``); the loss is on answer tokens only.

``stream.extras`` carries the tokenizer (given to ``backbone=causal_lm``) and what the ``tofu``
evaluator needs beyond the training tensors: per sample id the answer text, the paraphrased answer and
perturbed answers (encoded, for the truth ratio), the attribute label (probes); the model-utility sets
(world facts, real authors when the files have them) and held-out authors never trained on
(membership-inference non-members).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from clframe.errors import ConfigError
from clframe.registry import register_scenario
from clframe.scenarios import text_corpus, text_io
from clframe.scenarios.unlearning import insert_requests
from clframe.stream import Experience, Stream, TensorData


@dataclass(frozen=True)
class Item:
    """One question–answer pair, whatever file or generator it came from."""

    prompt: str
    answer: str
    group: int = 0
    stage: int = 0
    forget: bool = False
    paraphrase: str | None = None
    perturbed: tuple[str, ...] = ()
    label: int = -1
    attribute: str = ""


def _from_qa(qa, group: int, stage: int = 0, forget: bool = False) -> Item:
    return Item(
        qa.question,
        qa.answer,
        group,
        stage,
        forget,
        qa.paraphrased_answer,
        tuple(qa.perturbed_answers),
        qa.label,
        qa.attribute,
    )


def _from_record(r, group: int | None = None) -> Item:
    return Item(
        r.prompt,
        r.answer,
        r.group if group is None else group,
        r.stage,
        r.forget,
        r.paraphrased_answer,
        tuple(r.perturbed_answers),
    )


def get_tokenizer(tokenizer: str, vocab_size: int, items: Sequence[Item]):
    """``train``: a BPE tokenizer trained offline on the stream's text (deterministic); else a local folder."""
    if tokenizer == "train":
        texts = [text_io.format_prompt(i.prompt) for i in items]
        texts += [" " + a for i in items for a in (i.answer, i.paraphrase or "", *i.perturbed) if a]
        return text_io.train_tokenizer(texts, vocab_size=vocab_size)
    if not Path(tokenizer).expanduser().is_dir():
        raise ConfigError("scenario.tokenizer", tokenizer, ["train", "a local tokenizer / checkpoint folder"])
    return text_io.load_tokenizer(Path(tokenizer).expanduser())


def encode(tokenizer, items: Sequence[Item], max_length: int, answers: Sequence[str] | None = None) -> torch.Tensor:
    answers = [i.answer for i in items] if answers is None else answers
    return text_io.encode_pairs(tokenizer, [i.prompt for i in items], list(answers), max_length)


def truth_sets(tokenizer, items: Sequence[Item], max_length: int) -> dict[str, Any]:
    """Per item: encoded paraphrase (N, 2, L) and K perturbed answers (N, K, 2, L) where it has them."""
    k = min((len(i.perturbed) for i in items if i.paraphrase and i.perturbed), default=0)
    has = torch.tensor([bool(i.paraphrase) and len(i.perturbed) >= max(k, 1) for i in items])
    para = encode(tokenizer, items, max_length, [i.paraphrase if h else i.answer for i, h in zip(items, has)])
    flat = [i.perturbed[j] if h else i.answer for i, h in zip(items, has) for j in range(k)]
    pert = encode(tokenizer, [i for i in items for _ in range(k)], max_length, flat) if k else None
    return {
        "has_truth": has,
        "paraphrase": para,
        "perturbed": pert.view(len(items), k, 2, max_length) if pert is not None else None,
    }


def text_stream(
    name: str,
    items: Sequence[Item],
    *,
    tokenizer,
    max_length: int,
    utility: dict[str, Sequence[Item]] | None = None,
    holdout: Sequence[Item] = (),
    forget_groups: Sequence[int] = (),
    forget_items: bool = False,
    utility_classes: Sequence[int] = (),
    retain_budget: int | float | None = None,
    seed: int = 0,
) -> Stream:
    """One learn event per stage of ``items`` and one forget event after the last stage (``forget_groups``:
    those authors; ``forget_items``: the items flagged ``forget``). Sample ids index ``items``; classes
    are groups (utility and held-out sets get classes after them). ``utility_classes``: trained classes
    that are prior knowledge rather than authors (measured as a utility set, not as retain data)."""
    if not items:
        raise ConfigError("scenario", name, hint="the stream has no question–answer pairs")
    x = encode(tokenizer, items, max_length)
    y = torch.tensor([i.group for i in items], dtype=torch.long)
    data = TensorData(x, y, torch.arange(len(items)), torch.zeros(len(items), dtype=torch.long))
    stages = sorted({i.stage for i in items})
    stage_of = torch.tensor([i.stage for i in items])
    n_groups = int(y.max()) + 1
    learn = []
    for k, stage in enumerate(stages):
        part = data.subset(stage_of == stage)
        learn.append(Experience(k, "learn", part, part, part.classes(), name=f"stage_{stage}"))
    requests = []
    if forget_groups:
        requests.append({"after": len(learn) - 1, "type": "class", "classes": sorted(int(g) for g in forget_groups)})
    elif forget_items:
        ids = [n for n, i in enumerate(items) if i.forget]
        if not ids:
            raise ConfigError("scenario.path", name, hint="no record has forget: true (the forget split is empty)")
        requests.append({"after": len(learn) - 1, "type": "ids", "ids": ids})
    events = insert_requests(learn, requests, retain_budget=retain_budget, seed=seed)
    for e, stage in zip([e for e in events if e.kind == "learn"], stages):
        e.name = f"learn_stage_{stage}"
    for e in events:
        if e.kind == "forget":
            e.name = "forget_authors" if forget_groups else "forget_records"
    extras: dict[str, Any] = {
        "tokenizer": tokenizer,
        "answers": [i.answer for i in items],
        "labels": torch.tensor([i.label for i in items], dtype=torch.long),
        "attributes": [i.attribute for i in items],
        "utility_classes": sorted(utility_classes),
        **truth_sets(tokenizer, items, max_length),
    }
    offset = n_groups
    for key, sets in (("utility", utility or {}), ("holdout", {"holdout": holdout} if holdout else {})):
        encoded = {}
        for set_name, part in sets.items():
            if not part:
                continue
            low = min(i.group for i in part)
            groups = torch.tensor([offset + i.group - low for i in part], dtype=torch.long)
            offset = int(groups.max()) + 1
            sub = TensorData(
                encode(tokenizer, part, max_length), groups, torch.arange(len(part)), torch.zeros_like(groups)
            )
            encoded[set_name] = {
                "data": sub,
                "answers": [i.answer for i in part],
                **truth_sets(tokenizer, part, max_length),
            }
        extras[key] = encoded
    return Stream(name, events, offset, (2, max_length), "class", extras)


WORLD_FACTS = ("mixed", "stage", "none")


def stage_formats(answer_format: str | Sequence[str], n_events: int, world_facts: str) -> list[str]:
    """The answer format of each of the ``n_events`` learn events: one name for all, or a list of one each."""
    valid = list(text_corpus.ANSWER_FORMATS)
    names = [answer_format] * n_events if isinstance(answer_format, str) else [str(f) for f in answer_format]
    if any(name not in valid for name in names):
        raise ConfigError("scenario.answer_format", answer_format if isinstance(answer_format, str) else names, valid)
    if len(names) != n_events:
        events = "the world facts, then each author stage" if world_facts == "stage" else "each author stage"
        raise ConfigError(
            "scenario.answer_format",
            names,
            f"one of {', '.join(valid)} or a list of {n_events} of them",
            hint=f"one per learn event: {events}",
        )
    return names


def _check_fraction(key: str, value: float) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value < 1:
        raise ConfigError(key, value, "a fraction in [0, 1) of the authors (TOFU: 0.01, 0.05, 0.1); 0: no forget event")


@register_scenario("fictitious_authors")
def fictitious_authors(
    *,
    n_authors: int = 200,
    qa_per_author: int = 20,
    n_world_facts: int = 100,
    n_holdout_authors: int = 20,
    forget: float = 0.1,
    stages: int = 1,
    world_facts: str = "mixed",
    answer_format: str | Sequence[str] = "sentence",
    tokenizer: str = "train",
    vocab_size: int = 1024,
    max_length: int = 64,
    retain_budget: int | float | None = None,
    seed: int = 0,
) -> Stream:
    """A seeded TOFU-like corpus: the authors in ``stages`` fine-tuning stages, then a request to forget the
    last ``forget`` fraction of the authors (as TOFU's forget01 / 05 / 10 splits). The world facts are the
    knowledge unlearning must keep (model utility): ``mixed`` trains them with the first stage (a model that
    knows them, as TOFU's pretrained one), ``stage`` in a learn event of their own before the authors (a
    continual-learning stream: fine-tuning may forget them), ``none`` never (measured, not learned).
    Held-out authors are never trained on.

    ``answer_format`` is the task of each stage (:data:`clframe.scenarios.text_corpus.ANSWER_FORMATS`): one
    name for every stage, or a list with one per learn event in stream order (``world_facts: stage``: the
    world facts' event first). The world facts take the first event's format (also with ``none``), the
    held-out authors the last event's — that of the forgotten authors, so membership inference compares
    answers of one format."""
    _check_fraction("scenario.forget", forget)
    if world_facts not in WORLD_FACTS:
        raise ConfigError("scenario.world_facts", world_facts, WORLD_FACTS)
    if not isinstance(stages, int) or not 1 <= stages <= n_authors:
        raise ConfigError("scenario.stages", stages, f"1..{n_authors} (authors are split into stages)")
    corpus = text_corpus.fictitious_authors(n_authors, qa_per_author, n_world_facts, n_holdout_authors, seed=seed)
    first = 1 if world_facts == "stage" else 0
    per_stage = -(-n_authors // stages)
    formats = stage_formats(answer_format, first + -(-n_authors // per_stage), world_facts)
    stage_of = [first + a // per_stage for a in range(n_authors)]
    items = [
        _from_qa(text_corpus.in_format(q, formats[stage_of[q.group]]), q.group, stage_of[q.group]) for q in corpus.qa
    ]
    world = [_from_qa(text_corpus.in_format(q, formats[0]), n_authors, 0) for q in corpus.world_facts]
    holdout = [_from_qa(text_corpus.in_format(q, formats[-1]), q.group) for q in corpus.holdout]
    n_forget = int(round(forget * n_authors))
    if forget and n_forget == 0:
        raise ConfigError("scenario.forget", forget, hint=f"{forget} of {n_authors} authors rounds to none")
    everything = items + world + holdout
    tok = get_tokenizer(tokenizer, vocab_size, everything)
    trained = (world if world_facts != "none" else []) + items
    return text_stream(
        f"fictitious_authors_{n_authors}",
        trained,
        tokenizer=tok,
        max_length=max_length,
        utility={"world_facts": world},
        holdout=holdout,
        forget_groups=list(range(n_authors - n_forget, n_authors)),
        utility_classes=[n_authors] if world_facts != "none" else [],
        retain_budget=retain_budget,
        seed=seed,
    )


@register_scenario("tofu")
def tofu(
    *,
    path: str,
    forget_percent: int = 10,
    tokenizer: str = "train",
    vocab_size: int = 4096,
    max_length: int = 256,
    retain_budget: int | float | None = None,
    seed: int = 0,
) -> Stream:
    """The TOFU files from a local folder (``full.json``, ``forgetXX.json``, ``*_perturbed.json``...): one
    fine-tuning stage on all 200 authors, then forgetting TOFU's forget``XX`` split of authors."""
    if forget_percent not in (1, 5, 10):
        raise ConfigError("scenario.forget_percent", forget_percent, [1, 5, 10])
    train, world, real = text_io.load_tofu(Path(path).expanduser(), forget_percent)
    items = [_from_record(r) for r in train]
    utility = {"world_facts": [_from_record(r, 0) for r in world], "real_authors": [_from_record(r, 0) for r in real]}
    tok = get_tokenizer(tokenizer, vocab_size, items + [i for part in utility.values() for i in part])
    forget_groups = sorted({i.group for i in items if i.forget})
    return text_stream(
        f"tofu_forget{forget_percent:02d}",
        items,
        tokenizer=tok,
        max_length=max_length,
        utility=utility,
        forget_groups=forget_groups,
        retain_budget=retain_budget,
        seed=seed,
    )


@register_scenario("text_jsonl")
def text_jsonl(
    *,
    path: str,
    holdout_path: str | None = None,
    utility_path: str | None = None,
    tokenizer: str = "train",
    vocab_size: int = 2048,
    max_length: int = 128,
    retain_budget: int | float | None = None,
    seed: int = 0,
) -> Stream:
    """Your own prompt / answer pairs (``clframe.scenarios.text_io.load_jsonl``): one learn event per
    ``stage``, then one forget event for every record with ``forget: true`` (none: no forget event).
    ``holdout_path`` (never trained; membership-inference non-members) and ``utility_path`` (model
    utility) are optional JSONL files of the same format."""
    records = text_io.load_jsonl(Path(path).expanduser())
    items = [_from_record(r) for r in records]
    utility = {"utility": [_from_record(r, 0) for r in text_io.load_jsonl(Path(utility_path))]} if utility_path else {}
    holdout = [_from_record(r, 0) for r in text_io.load_jsonl(Path(holdout_path))] if holdout_path else []
    tok = get_tokenizer(tokenizer, vocab_size, items + holdout + [i for p in utility.values() for i in p])
    return text_stream(
        f"text_{Path(path).stem}",
        items,
        tokenizer=tok,
        max_length=max_length,
        utility=utility,
        holdout=holdout,
        forget_items=any(i.forget for i in items),
        retain_budget=retain_budget,
        seed=seed,
    )
