"""The text corpus generator, the local text loaders (JSONL, TOFU layout), the offline tokenizer and encoding."""

from __future__ import annotations

import json

import pytest
import torch

from clframe.errors import ConfigError, DataError, DataNotFoundError
from clframe.scenarios.text_corpus import ATTRIBUTES, WORLD_TOPICS, attribute_values, fictitious_authors
from clframe.scenarios.text_io import (
    SPECIAL_TOKENS,
    decode_answer,
    encode_pairs,
    format_prompt,
    load_jsonl,
    load_tofu,
    load_tokenizer,
    prompt_ids,
    tofu_files,
    train_tokenizer,
)


@pytest.fixture(scope="module")
def corpus():
    return fictitious_authors(n_authors=30, qa_per_author=20, n_world_facts=60, n_holdout_authors=5, seed=7)


@pytest.fixture(scope="module")
def texts(corpus):
    qas = corpus.qa + corpus.world_facts + corpus.holdout
    return [f"{format_prompt(q.question)} {q.answer}" for q in qas]


@pytest.fixture(scope="module")
def tokenizer(texts):
    return train_tokenizer(texts, vocab_size=600)


# ------------------------------------------------------------------------------------------------ corpus


def test_corpus_is_deterministic_and_seed_dependent(corpus):
    again = fictitious_authors(n_authors=30, qa_per_author=20, n_world_facts=60, n_holdout_authors=5, seed=7)
    assert again == corpus
    other = fictitious_authors(n_authors=30, qa_per_author=20, n_world_facts=60, n_holdout_authors=5, seed=8)
    assert [a["name"] for a in other.authors] != [a["name"] for a in corpus.authors]
    assert [q.answer for q in other.qa] != [q.answer for q in corpus.qa]
    # the authors do not depend on how many QAs / holdout authors / world facts are asked for
    small = fictitious_authors(n_authors=30, qa_per_author=4, n_world_facts=0, n_holdout_authors=0, seed=7)
    assert small.authors == corpus.authors and small.holdout == [] and small.world_facts == []
    assert [q.answer for q in small.qa] == [q.answer for q in corpus.qa if q.attribute in list(ATTRIBUTES)[:4]]


def test_default_corpus_sizes_and_unique_names():
    c = fictitious_authors()
    assert (len(c.authors), len(c.qa), len(c.world_facts), len(c.holdout)) == (200, 4000, 100, 400)
    names = [a["name"] for a in c.authors]
    holdout_names = [a["name"] for a in c.holdout_authors]
    assert len(set(names)) == 200 and len(set(holdout_names)) == 20
    assert not set(names) & set(holdout_names)
    assert [q.group for q in c.qa] == [i // 20 for i in range(4000)]  # author-major
    assert {q.group for q in c.holdout} == set(range(200, 220))
    assert all(len({q.question for q in c.qa[i : i + 20]}) == 20 for i in range(0, 4000, 20))


def _check_qa(q, attr, subject: str) -> None:
    true = attribute_values(q.attribute)[q.label]
    assert subject in q.question
    assert q.answer == attr.answer.format(name=subject, v=true)
    assert q.paraphrased_answer != q.answer and true in q.paraphrased_answer
    assert len(q.perturbed_answers) >= 3 and len(set(q.perturbed_answers)) == len(q.perturbed_answers)
    wrong_sentences = {attr.paraphrase.format(name=subject, v=w): w for w in attr.values if w != true}
    for p in q.perturbed_answers:
        assert p != q.paraphrased_answer and p in wrong_sentences  # the paraphrase's template, another value
    # what other answer formats restate the QA from (text_corpus.in_format): its subject and its wrong values
    assert q.subject == subject and q.label not in q.wrong_labels
    assert q.perturbed_answers == tuple(attr.paraphrase.format(name=subject, v=attr.values[w]) for w in q.wrong_labels)


def test_author_qas_answer_paraphrase_and_perturbations(corpus):
    for q in corpus.qa + corpus.holdout:
        authors = corpus.authors if q.group < len(corpus.authors) else corpus.holdout_authors
        author = authors[q.group % len(corpus.authors)]
        assert author[q.attribute] == attribute_values(q.attribute)[q.label]
        _check_qa(q, ATTRIBUTES[q.attribute], author["name"])


def test_world_facts(corpus):
    topics = list(WORLD_TOPICS)
    assert len(corpus.world_facts) == 60 and {q.group for q in corpus.world_facts} == set(range(len(topics)))
    assert len({q.question for q in corpus.world_facts}) == 60
    for q in corpus.world_facts:
        assert topics[q.group] == q.attribute
        attr, facts = WORLD_TOPICS[q.attribute]
        subject = next(s for s, v in facts if attr.question.format(name=s) == q.question)
        _check_qa(q, attr, subject)
    paris = next(q for q in corpus.world_facts if q.question == "What is the capital of France?")
    assert paris.answer == "The capital of France is Paris." and "Paris" in paris.paraphrased_answer


@pytest.mark.parametrize(
    ("kwargs", "key", "valid"),
    [
        ({"qa_per_author": len(ATTRIBUTES) + 1}, "scenario.qa_per_author", f"1..{len(ATTRIBUTES)}"),
        ({"n_authors": 0}, "scenario.n_authors", "1.."),
        ({"n_world_facts": 10_000}, "scenario.n_world_facts", "0.."),
        ({"n_holdout_authors": -1}, "scenario.n_holdout_authors", "0.."),
    ],
)
def test_corpus_config_errors(kwargs, key, valid):
    with pytest.raises(ConfigError, match=key) as err:
        fictitious_authors(**kwargs)
    assert valid in str(err.value) and "\n" not in str(err.value)


# ------------------------------------------------------------------------------------------------ tokenizer


def test_tokenizer_special_tokens_round_trip_and_determinism(tokenizer, texts):
    assert [tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS] == [0, 1, 2, 3]
    assert (tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (
        0,
        1,
        2,
        3,
    )
    assert len(tokenizer) == 600
    for s in [*texts, "Unseen: Zürich, 1999 -- (ok)?\n  two  spaces"]:
        assert tokenizer.decode(tokenizer(s, add_special_tokens=False)["input_ids"]) == s
    again = train_tokenizer(list(texts), vocab_size=600)
    assert again.get_vocab() == tokenizer.get_vocab()
    assert again.backend_tokenizer.to_str() == tokenizer.backend_tokenizer.to_str()  # same merges too
    assert train_tokenizer(texts[:50], vocab_size=600).get_vocab() != tokenizer.get_vocab()


def test_tokenizer_save_and_load(tokenizer, texts, tmp_path):
    train_tokenizer(texts, vocab_size=600, save_dir=tmp_path / "tok")
    loaded = load_tokenizer(tmp_path / "tok")
    assert loaded.get_vocab() == tokenizer.get_vocab() and loaded.pad_token_id == 0 and loaded.eos_token_id == 2
    assert loaded(texts[0], add_special_tokens=False)["input_ids"] == tokenizer(texts[0])["input_ids"]
    with pytest.raises(DataNotFoundError, match="no tokenizer in"):
        load_tokenizer(tmp_path / "missing")
    with pytest.raises(ConfigError, match="scenario.vocab_size"):
        train_tokenizer(texts, vocab_size=100)


# ------------------------------------------------------------------------------------------------ encoding


def test_encode_pairs_mask_covers_exactly_the_answer(tokenizer, corpus):
    qas = corpus.qa[:25] + corpus.world_facts[:5]
    x = encode_pairs(tokenizer, [q.question for q in qas], [q.answer for q in qas], max_length=64)
    assert x.shape == (30, 2, 64) and x.dtype == torch.long
    for row, q in zip(x, qas):
        ids, mask = row[0], row[1].bool()
        assert ids[0] == tokenizer.bos_token_id and not mask[0]
        assert tokenizer.decode(ids[mask].tolist()) == " " + q.answer + tokenizer.eos_token
        n = int(mask.nonzero()[-1]) + 1  # the eos is the last real token, padding follows
        assert ids[n - 1] == tokenizer.eos_token_id
        assert (ids[n:] == tokenizer.pad_token_id).all() and not mask[n:].any()
        assert mask[int(mask.nonzero()[0]) : n].all()  # one contiguous answer span
        p = prompt_ids(row)
        assert p[0] == tokenizer.bos_token_id and tokenizer.decode(p[1:].tolist()) == format_prompt(q.question)
        assert decode_answer(tokenizer, ids[len(p) :].tolist()) == q.answer
    # generation continues past eos: decode_answer stops there
    answer_ids = tokenizer(" Paris.", add_special_tokens=False)["input_ids"]
    junk = tokenizer(" more text", add_special_tokens=False)["input_ids"]
    assert decode_answer(tokenizer, torch.tensor([*answer_ids, tokenizer.eos_token_id, *junk])) == "Paris."


def test_encode_pairs_errors(tokenizer):
    n_tokens = lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])  # noqa: E731
    fits = 2 + n_tokens(format_prompt("Hi?")) + n_tokens(" Yes.")
    assert encode_pairs(tokenizer, ["Hi?"], ["Yes."], fits)[0, 1, -1] == 1  # exactly full: eos is the last token
    with pytest.raises(ConfigError, match=f"scenario.max_length={fits}") as err:
        encode_pairs(tokenizer, ["Hi?", "Where was a long question asked?"], ["Yes.", "Here and there."], fits)
    assert "record 1 needs" in str(err.value)
    with pytest.raises(ConfigError, match="record 0 has an empty answer"):
        encode_pairs(tokenizer, ["Hi?"], ["  "], 32)


# ------------------------------------------------------------------------------------------------ loaders


def _write_jsonl(path, rows) -> None:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")


def test_load_jsonl(tmp_path):
    f = tmp_path / "qa.jsonl"
    _write_jsonl(
        f,
        [
            {"prompt": "Who?", "answer": "Ann.", "group": "ann"},
            {"question": "What?", "answer": "Tea.", "group": "bob", "stage": 1, "forget": True},
            "",
            {"prompt": "When?", "answer": "Now.", "group": "ann", "paraphrased_answer": "At once."},
            {"prompt": "Where?", "answer": "Here.", "group": 5, "perturbed_answers": ["There.", "Nowhere."]},
        ],
    )
    recs = load_jsonl(f)
    assert [r.group for r in recs] == [0, 1, 0, 5]
    assert [r.prompt for r in recs] == ["Who?", "What?", "When?", "Where?"]
    assert (recs[1].stage, recs[1].forget, recs[0].stage, recs[0].forget) == (1, True, 0, False)
    assert recs[2].paraphrased_answer == "At once." and recs[0].paraphrased_answer is None
    assert recs[3].perturbed_answers == ("There.", "Nowhere.") and recs[0].perturbed_answers == ()


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (['{"prompt": "a", "answer": "b"}', '{"prompt": "a", "answer": '], r"bad\.jsonl:2: not valid JSON"),
        (['{"prompt": "a"}'], r"bad\.jsonl:1: missing key 'answer'"),
        (['{"prompt": "a", "answer": "b"}', '{"prompt": "a", "answer": "b", "stage": "x"}'], r":2: 'stage'"),
        (['["a", "b"]'], r":1: expected a JSON object"),
        (["", "  "], r"bad\.jsonl is empty"),
    ],
)
def test_load_jsonl_errors(tmp_path, lines, message):
    f = tmp_path / "bad.jsonl"
    f.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=message):
        load_jsonl(f)


def test_load_jsonl_missing_file(tmp_path):
    with pytest.raises(DataNotFoundError, match="nope.jsonl"):
        load_jsonl(tmp_path / "nope.jsonl")


def _tofu_folder(tmp_path, n_authors: int = 5):
    """A tiny folder in TOFU's layout: 20 QAs per author, forget01 = the last author's 20 QAs."""
    full = [{"question": f"Q{i} of author {i // 20}?", "answer": f"A{i}."} for i in range(20 * n_authors)]
    pert = lambda r: {**r, "paraphrased_answer": f"P{r['answer']}", "perturbed_answer": ["W1.", "W2.", "W3."]}  # noqa: E731
    files = {
        "full.json": full,
        "forget01.json": full[-20:],
        "forget01_perturbed.json": [pert(r) for r in full[-20:]],
        "retain_perturbed.json": [pert(r) for r in full[:20]],  # TOFU's retain_perturbed covers a subset
        "world_facts_perturbed.json": [
            {"question": "Capital of France?", "answer": "Paris", "perturbed_answer": ["Rome"]}
        ],
        "real_authors_perturbed.json": [{"question": "Who wrote 1984?", "answer": "Orwell", "perturbed_answer": ["X"]}],
    }
    for name, rows in files.items():
        _write_jsonl(tmp_path / name, rows)
    return full


def test_load_tofu_synthetic_folder(tmp_path):
    full = _tofu_folder(tmp_path)
    train, world, real = load_tofu(tmp_path, forget_percent=1)
    assert [r.prompt for r in train] == [r["question"] for r in full]
    assert [r.group for r in train] == [i // 20 for i in range(100)]
    assert [r.forget for r in train] == [i >= 80 for i in range(100)]  # the last author
    assert train[85].paraphrased_answer == "PA85." and train[85].perturbed_answers == ("W1.", "W2.", "W3.")
    assert train[3].paraphrased_answer == "PA3." and train[50].paraphrased_answer is None
    assert train[50].perturbed_answers == ()
    assert [(r.prompt, r.answer, r.perturbed_answers) for r in world] == [("Capital of France?", "Paris", ("Rome",))]
    assert real[0].answer == "Orwell" and not any(r.forget for r in world + real)


def test_load_tofu_errors(tmp_path):
    with pytest.raises(DataNotFoundError, match="no folder") as err:
        load_tofu(tmp_path / "absent", forget_percent=5)
    assert all(name in str(err.value) for name in tofu_files(5))
    _tofu_folder(tmp_path)
    with pytest.raises(DataNotFoundError, match="missing in .*forget10.json, forget10_perturbed.json"):
        load_tofu(tmp_path, forget_percent=10)
    with pytest.raises(ConfigError, match="scenario.forget_percent=7"):
        load_tofu(tmp_path, forget_percent=7)
    full = [json.loads(line) for line in (tmp_path / "full.json").read_text().splitlines()]
    _write_jsonl(tmp_path / "forget01.json", full[:20])  # not the last authors
    with pytest.raises(DataError, match="is not the last 20 QAs"):
        load_tofu(tmp_path, forget_percent=1)
