"""Local text data for language-model scenarios: JSONL and TOFU loaders, an offline BPE tokenizer, encoding.

Nothing here downloads. :func:`load_jsonl` reads a user's prompt/answer file, :func:`load_tofu` the files of the
TOFU data set (``locuslab/TOFU`` on the Hugging Face Hub, JSON lines) from a local folder. :func:`train_tokenizer`
trains a byte-level BPE tokenizer on the corpus itself, so a tiny LM needs no pretrained vocabulary, and
:func:`encode_pairs` turns prompt/answer pairs into fixed-length ``(ids, loss mask)`` tensors whose mask covers
exactly the answer tokens and the end-of-sequence token.

``tokenizers`` and ``transformers`` are imported inside the functions that use them: every module of
``clframe.scenarios`` is imported at each run by plugin discovery, and those imports are slow.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from clframe.errors import ConfigError, DataError, DataNotFoundError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

__all__ = [
    "SPECIAL_TOKENS",
    "TOFU_FORGET_PERCENTS",
    "TextRecord",
    "decode_answer",
    "encode_pairs",
    "format_prompt",
    "load_jsonl",
    "load_tofu",
    "load_tokenizer",
    "prompt_ids",
    "tofu_files",
    "train_tokenizer",
]

SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<unk>")  # ids 0..3 of a tokenizer from train_tokenizer
TOFU_FORGET_PERCENTS = (1, 5, 10)
TOFU_QA_PER_AUTHOR = 20


@dataclass(frozen=True)
class TextRecord:
    """One prompt/answer pair from a local file."""

    prompt: str
    answer: str
    stage: int = 0  # fine-tuning stage (learn event) index
    forget: bool = False  # requested to be forgotten (after its stage)
    group: int = 0  # author / subject id (forget requests by group)
    paraphrased_answer: str | None = None
    perturbed_answers: tuple[str, ...] = ()


# ---------------------------------------------------------------------------------------------------- loaders


def _read_json_lines(path: Path, what: str) -> list[tuple[int, dict]]:
    """``(line number, object)`` of a JSON-lines file (blank lines skipped); errors name file and line."""
    if not path.is_file():
        raise DataNotFoundError(f"{what} file not found: {path} (clframe never downloads data)")
    rows = []
    with path.open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{path}:{n}: not valid JSON ({err.msg}); expected one JSON object a line") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}:{n}: expected a JSON object, got {type(row).__name__}")
            rows.append((n, row))
    if not rows:
        raise DataError(f"{path} is empty; expected one JSON object a line")
    return rows


def _text(row: dict, keys: Sequence[str], path: Path, n: int, required: bool = True) -> str | None:
    for key in keys:
        if key in row and row[key] is not None:
            if not isinstance(row[key], str):
                raise DataError(f"{path}:{n}: {key!r} must be a string, got {row[key]!r}")
            return row[key]
    if required:
        raise DataError(f"{path}:{n}: missing key {' or '.join(map(repr, keys))}")
    return None


def _perturbed(row: dict, key: str, path: Path, n: int) -> tuple[str, ...]:
    value = row.get(key)
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise DataError(f"{path}:{n}: {key!r} must be a list of strings, got {value!r}")
    return tuple(value)


def load_jsonl(path: str | Path) -> list[TextRecord]:
    """Records of a JSON-lines file: keys ``prompt`` (or ``question``), ``answer``, optional ``stage`` (int),
    ``forget`` (bool), ``group`` (int, or str mapped to ints in first-seen order), ``paraphrased_answer``,
    ``perturbed_answers`` (list of str). Errors name the file and the line."""
    path = Path(path).expanduser()
    groups: dict[str, int] = {}
    records = []
    for n, row in _read_json_lines(path, "JSONL (scenario.path)"):
        stage, forget, group = row.get("stage", 0), row.get("forget", False), row.get("group", 0)
        if isinstance(stage, bool) or not isinstance(stage, int) or stage < 0:
            raise DataError(f"{path}:{n}: 'stage' must be an integer >= 0, got {stage!r}")
        if not isinstance(forget, bool):
            raise DataError(f"{path}:{n}: 'forget' must be true or false, got {forget!r}")
        if isinstance(group, str):
            group = groups.setdefault(group, len(groups))
        elif isinstance(group, bool) or not isinstance(group, int):
            raise DataError(f"{path}:{n}: 'group' must be an integer or a string, got {group!r}")
        records.append(
            TextRecord(
                prompt=_text(row, ("prompt", "question"), path, n),
                answer=_text(row, ("answer",), path, n),
                stage=stage,
                forget=forget,
                group=group,
                paraphrased_answer=_text(row, ("paraphrased_answer",), path, n, required=False),
                perturbed_answers=_perturbed(row, "perturbed_answers", path, n),
            )
        )
    return records


def tofu_files(forget_percent: int) -> tuple[str, ...]:
    """The TOFU files :func:`load_tofu` reads for ``forget_percent`` (names as published in locuslab/TOFU)."""
    if forget_percent not in TOFU_FORGET_PERCENTS:
        raise ConfigError("scenario.forget_percent", forget_percent, TOFU_FORGET_PERCENTS)
    split = f"forget{forget_percent:02d}"
    return (
        "full.json",
        f"{split}.json",
        f"{split}_perturbed.json",
        "retain_perturbed.json",
        "world_facts_perturbed.json",
        "real_authors_perturbed.json",
    )


def _tofu_records(path: Path) -> list[TextRecord]:
    """Records of a TOFU file (keys ``question``, ``answer``, optional ``paraphrased_answer`` and the list
    ``perturbed_answer``); ``group`` is the row index // 20 (TOFU's 20 QAs per author)."""
    return [
        TextRecord(
            prompt=_text(row, ("question",), path, n),
            answer=_text(row, ("answer",), path, n),
            group=i // TOFU_QA_PER_AUTHOR,
            paraphrased_answer=_text(row, ("paraphrased_answer",), path, n, required=False),
            perturbed_answers=_perturbed(row, "perturbed_answer", path, n),
        )
        for i, (n, row) in enumerate(_read_json_lines(path, "TOFU"))
    ]


def load_tofu(
    path: str | Path, forget_percent: int = 10
) -> tuple[list[TextRecord], list[TextRecord], list[TextRecord]]:
    """TOFU from a local folder: ``(train, world_facts, real_authors)``.

    ``train`` is ``full.json`` in file order with ``group`` = author index (row // 20) and ``forget`` set on the
    QAs of ``forget{XX}.json``, which must be the last QAs of ``full.json`` (TOFU's forget sets are its last
    authors: forget01 = 2 authors, forget05 = 10, forget10 = 20). Paraphrased and perturbed answers come from
    ``forget{XX}_perturbed.json`` and ``retain_perturbed.json`` (matched by question text; QAs in neither keep
    none). The world-facts and real-authors records are the ``*_perturbed.json`` files (TOFU's model-utility
    sets; their answers have no paraphrase, as in TOFU)."""
    names = tofu_files(forget_percent)
    folder = Path(path).expanduser()
    missing = [name for name in names if not (folder / name).is_file()]
    if missing:
        where = f"missing in {folder}: {', '.join(missing)}" if folder.is_dir() else f"no folder {folder}"
        raise DataNotFoundError(
            f"TOFU files not found ({where}); scenario.path must hold {', '.join(names)} "
            "(JSON lines, as published in locuslab/TOFU on the Hugging Face Hub; clframe never downloads data)"
        )
    full_name, forget_name, forget_pert, retain_pert, world_name, real_name = names
    full = _tofu_records(folder / full_name)
    forget = _tofu_records(folder / forget_name)
    first_forget = len(full) - len(forget)
    if first_forget < 0 or {r.prompt for r in full[first_forget:]} != {r.prompt for r in forget}:
        raise DataError(
            f"{folder / forget_name} ({len(forget)} QAs) is not the last {len(forget)} QAs of "
            f"{folder / full_name} ({len(full)} QAs), as in TOFU; replace the two with files of the same release"
        )
    variants = {r.prompt: r for name in (retain_pert, forget_pert) for r in _tofu_records(folder / name)}
    train = []
    for i, r in enumerate(full):
        v = variants.get(r.prompt)
        train.append(
            TextRecord(
                prompt=r.prompt,
                answer=r.answer,
                group=r.group,
                forget=i >= first_forget,
                paraphrased_answer=v.paraphrased_answer if v else r.paraphrased_answer,
                perturbed_answers=v.perturbed_answers if v else r.perturbed_answers,
            )
        )
    world = [_ungrouped(r) for r in _tofu_records(folder / world_name)]
    real = [_ungrouped(r) for r in _tofu_records(folder / real_name)]
    return train, world, real


def _ungrouped(r: TextRecord) -> TextRecord:
    return dataclasses.replace(r, group=0)


# ---------------------------------------------------------------------------------------------------- tokenizer


def train_tokenizer(
    texts: Sequence[str], vocab_size: int = 1024, save_dir: str | Path | None = None
) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained offline on ``texts``, as a ``transformers.PreTrainedTokenizerFast``
    with ``<pad>`` (id 0), ``<bos>``, ``<eos>``, ``<unk>`` set; ``save_dir`` -> ``save_pretrained(save_dir)``.

    Byte-level (GPT-2 style) pre-tokenisation keeps every byte, spaces included, so decoding reproduces the text
    exactly (a whitespace pre-tokenizer would lose the spacing around punctuation) and no text is ever unknown
    (``<unk>`` is set for API completeness only). No normaliser and no post-processor: :func:`encode_pairs`
    adds ``<bos>`` / ``<eos>`` itself. The BPE trainer is deterministic: the same texts give the same vocabulary
    and merges."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    n_min = len(pre_tokenizers.ByteLevel.alphabet()) + len(SPECIAL_TOKENS)
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < n_min:
        raise ConfigError("scenario.vocab_size", vocab_size, f"an integer >= {n_min} (256 bytes + special tokens)")
    texts = list(texts)
    if not any(t.strip() for t in texts):
        raise ConfigError("scenario.texts", f"{len(texts)} empty texts", hint="the tokenizer needs training text")
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    pad, bos, eos, unk = SPECIAL_TOKENS
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=pad,
        bos_token=bos,
        eos_token=eos,
        unk_token=unk,
        clean_up_tokenization_spaces=False,  # keep " ." etc. as trained: exact round trip
    )
    if save_dir is not None:
        fast.save_pretrained(str(save_dir))
    return fast


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerFast:
    """A tokenizer saved with ``save_pretrained`` (e.g. by :func:`train_tokenizer`), read offline."""
    folder = Path(path).expanduser()
    if not folder.is_dir() or not any((folder / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json")):
        raise DataNotFoundError(
            f"no tokenizer in {folder} (expected tokenizer.json / tokenizer_config.json written by "
            "save_pretrained, e.g. train_tokenizer(texts, save_dir=...); clframe never downloads)"
        )
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)


# ---------------------------------------------------------------------------------------------------- encoding


def format_prompt(question: str) -> str:
    """The prompt a question is asked with (training and generation alike)."""
    return f"Question: {question}\nAnswer:"


def _special_ids(tokenizer: Any) -> tuple[int, int, int]:
    """(bos, eos, pad) ids; a tokenizer without bos / pad (e.g. GPT-2's) uses eos for them."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ConfigError("scenario.tokenizer", type(tokenizer).__name__, hint="the tokenizer has no eos token")
    bos = tokenizer.bos_token_id
    pad = tokenizer.pad_token_id
    return (eos if bos is None else bos), eos, (eos if pad is None else pad)


def encode_pairs(tokenizer: Any, prompts: Sequence[str], answers: Sequence[str], max_length: int) -> Tensor:
    """Encode questions and answers as a LongTensor ``(N, 2, max_length)``.

    Row 0: ``[bos] + tokens(format_prompt(q)) + tokens(" " + answer) + [eos]``, right-padded with the pad id;
    prompt and answer are tokenised separately, so the boundary is exact. Row 1: the loss mask, 1 on the answer
    tokens and the eos (the tokens the model learns to predict), 0 on bos, prompt and padding."""
    if len(prompts) != len(answers):
        raise ValueError(f"{len(prompts)} prompts but {len(answers)} answers")
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 3:
        raise ConfigError("scenario.max_length", max_length, "an integer >= 3")
    bos, eos, pad = _special_ids(tokenizer)
    for i, a in enumerate(answers):
        if not a.strip():
            raise ConfigError("scenario.answer", a, hint=f"record {i} has an empty answer")
    enc_p = tokenizer([format_prompt(q) for q in prompts], add_special_tokens=False)["input_ids"]
    enc_a = tokenizer([" " + a for a in answers], add_special_tokens=False)["input_ids"]
    out = torch.full((len(prompts), 2, max_length), 0, dtype=torch.long)
    out[:, 0] = pad
    for i, (p, a) in enumerate(zip(enc_p, enc_a)):
        ids = [bos, *p, *a, eos]
        if len(ids) > max_length:
            raise ConfigError("scenario.max_length", max_length, hint=f"record {i} needs {len(ids)} tokens")
        out[i, 0, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        out[i, 1, 1 + len(p) : len(ids)] = 1
    return out


def prompt_ids(x_row: Tensor) -> Tensor:
    """The ids of an encoded pair ``(2, L)`` before its first answer-mask position (where generation starts)."""
    mask = x_row[1].nonzero()
    if len(mask) == 0:
        raise ValueError("the encoded pair has no answer token (its loss mask is all 0)")
    return x_row[0, : int(mask[0])]


def decode_answer(tokenizer: Any, ids: Tensor | Sequence[int]) -> str:
    """Generated answer ids -> text: cut at the first eos, special tokens dropped, stripped."""
    ids = ids.tolist() if isinstance(ids, Tensor) else list(ids)
    eos = tokenizer.eos_token_id
    if eos is not None and eos in ids:
        ids = ids[: ids.index(eos)]
    return tokenizer.decode(ids, skip_special_tokens=True).strip()
