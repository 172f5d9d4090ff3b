"""A Hugging Face ``transformers`` causal language model as a clframe backbone (``backbone=causal_lm``).

Either a small Llama- or GPT-2-style model built from sizes in the config (``architecture``,
``hidden_size``, ``layers``, ``heads``...; randomly initialised from the run's seed), or a local
checkpoint folder (``path=``: weights and tokenizer, loaded with local files only — the hub is forced
offline and nothing is ever downloaded). LoRA adapters through ``peft`` with ``lora_rank > 0``
(``lora_targets`` names the adapted modules; the base weights are frozen).

Inputs are a text stream's ``x``: (N, 2, L) int64, row 0 the token ids (right-padded with the
tokenizer's pad id), row 1 the answer mask (1 on the tokens the model is trained to predict: the answer
and its end-of-sequence token). With ``language_model = True`` the :class:`~clframe.strategy.Strategy`
has no class head and asks this module for next-token logits, the answer's log-likelihood, its length
and whether it is reproduced greedily (``token_logits``, ``answer_log_likelihood``, ``answer_length``,
``answer_correct``); ``forward_features`` is the mean final hidden state over the sequence's tokens
(CKA, probes). ``transformers`` and ``peft`` are imported when a model is built, not with clframe.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from clframe.backbones.simple import Backbone
from clframe.errors import ConfigError
from clframe.registry import register_backbone

ARCHITECTURES = ("llama", "gpt2")
#: the modules LoRA adapts by default (attention query / value projections, as the LoRA paper)
DEFAULT_LORA_TARGETS = {"llama": ["q_proj", "v_proj"], "gpt2": ["c_attn"]}


def force_offline() -> None:
    """Hugging Face libraries never reach the network from clframe (set before they are imported)."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


def _config(architecture: str, tokenizer, length: int, sizes: dict[str, Any]):
    from transformers import GPT2Config, LlamaConfig

    ids = {
        "vocab_size": len(tokenizer),
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "tie_word_embeddings": sizes["tie_embeddings"],
    }
    h, n_layers, heads, dropout = sizes["hidden_size"], sizes["layers"], sizes["heads"], sizes["dropout"]
    if architecture == "llama":
        return LlamaConfig(
            hidden_size=h,
            intermediate_size=sizes["intermediate_size"] or 4 * h,
            num_hidden_layers=n_layers,
            num_attention_heads=heads,
            num_key_value_heads=heads,
            max_position_embeddings=length,
            attention_dropout=dropout,
            **ids,
        )
    return GPT2Config(
        n_embd=h,
        n_inner=sizes["intermediate_size"] or 4 * h,
        n_layer=n_layers,
        n_head=heads,
        n_positions=length,
        resid_pdrop=dropout,
        embd_pdrop=dropout,
        attn_pdrop=dropout,
        **ids,
    )


def check_checkpoint_tokenizer(path: Path, tokenizer, n_embeddings: int) -> None:
    """The stream's tokenizer must be the checkpoint's own (same vocabulary) and fit its embeddings."""
    has_own = any((path / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "vocab.json"))
    if has_own:
        from transformers import AutoTokenizer

        own = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        if own.get_vocab() != tokenizer.get_vocab():
            raise ConfigError(
                "scenario.tokenizer",
                getattr(tokenizer, "name_or_path", "") or "train",
                [str(path)],
                hint=f"backbone.path={path} comes with its own tokenizer; the stream was tokenized with another",
            )
    if len(tokenizer) > n_embeddings:
        raise ConfigError(
            "scenario.tokenizer",
            len(tokenizer),
            f"at most {n_embeddings} tokens",
            hint=f"the tokenizer has more tokens than backbone.path={path} has embeddings",
        )


@register_backbone("causal_lm")
class CausalLM(Backbone):
    """A transformers causal LM built from sizes or loaded from a local folder; LoRA through peft.

    Args:
        input_shape: (2, L) from the text stream: L is the context length.
        tokenizer: the stream's tokenizer (given by the runner from ``stream.extras``).
        path: a local checkpoint folder (``save_pretrained`` layout); sizes are then ignored.
        architecture: ``llama`` or ``gpt2`` (built from the sizes below).
        hidden_size, layers, heads, intermediate_size (default 4 x hidden), dropout, tie_embeddings: sizes.
        lora_rank: > 0 adds LoRA adapters (peft) of this rank and freezes the base weights.
        lora_alpha, lora_dropout, lora_targets: LoRA settings (targets default to the attention q / v projections).
        lora_rslora: rank-stabilised scaling ``lora_alpha / sqrt(rank)`` instead of ``lora_alpha / rank`` (peft's
            ``use_rslora``; Kalajdzievski 2023), so that higher ranks learn as fast as lower ones.
        gradient_checkpointing: trade compute for activation memory (real checkpoints).
    """

    language_model = True

    def __init__(
        self,
        input_shape: Sequence[int],
        tokenizer: Any = None,
        *,
        path: str | None = None,
        architecture: str = "llama",
        hidden_size: int = 64,
        layers: int = 2,
        heads: int = 4,
        intermediate_size: int | None = None,
        dropout: float = 0.0,
        tie_embeddings: bool = True,
        lora_rank: int = 0,
        lora_alpha: float = 16.0,
        lora_dropout: float = 0.0,
        lora_targets: list[str] | None = None,
        lora_rslora: bool = False,
        gradient_checkpointing: bool = False,
    ):
        super().__init__()
        if tokenizer is None or len(input_shape) != 2 or input_shape[0] != 2:
            raise ConfigError(
                "backbone", "causal_lm", hint="a causal LM needs a text scenario (fictitious_authors, tofu, text_jsonl)"
            )
        if architecture not in ARCHITECTURES:
            raise ConfigError("backbone.architecture", architecture, ARCHITECTURES)
        if hidden_size <= 0 or layers <= 0 or heads <= 0 or hidden_size % heads:
            raise ConfigError(
                "backbone",
                {"hidden_size": hidden_size, "heads": heads, "layers": layers},
                "positive, heads divide hidden_size",
            )
        if lora_rank < 0:
            raise ConfigError("backbone.lora_rank", lora_rank, "0 (full fine-tuning) or a positive rank")
        force_offline()
        from transformers import AutoModelForCausalLM

        self.tokenizer, self.length = tokenizer, int(input_shape[1])
        self.pad_id = int(tokenizer.pad_token_id)
        if path is not None:
            folder = Path(path).expanduser()
            if not (folder / "config.json").is_file():
                raise ConfigError("backbone.path", str(path), hint="no config.json there: a save_pretrained folder")
            model = AutoModelForCausalLM.from_pretrained(str(folder), local_files_only=True)
            check_checkpoint_tokenizer(folder, tokenizer, model.get_input_embeddings().num_embeddings)
            architecture = getattr(model.config, "model_type", architecture)
        else:
            sizes = {
                "hidden_size": hidden_size,
                "layers": layers,
                "heads": heads,
                "intermediate_size": intermediate_size,
                "dropout": dropout,
                "tie_embeddings": tie_embeddings,
            }
            model = AutoModelForCausalLM.from_config(_config(architecture, tokenizer, self.length, sizes))
        if gradient_checkpointing:
            model.gradient_checkpointing_enable()
            model.config.use_cache = False
        if lora_rank:
            from peft import LoraConfig, get_peft_model

            targets = list(lora_targets) if lora_targets else DEFAULT_LORA_TARGETS.get(architecture)
            if not targets:
                raise ConfigError("backbone.lora_targets", lora_targets, hint=f"no default for {architecture}")
            lora = LoraConfig(
                r=lora_rank,
                lora_alpha=lora_alpha,
                lora_dropout=lora_dropout,
                target_modules=targets,
                use_rslora=lora_rslora,
            )
            try:
                model = get_peft_model(model, lora)
            except ValueError as err:
                raise ConfigError("backbone.lora_targets", targets, hint=str(err).splitlines()[0]) from err
        self.model = model
        self.num_features = int(model.config.hidden_size)

    # ---------------------------------------------------------------- pieces of the input
    def _split(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        ids, answer = x[:, 0], x[:, 1]
        return ids, (ids != self.pad_id).long(), answer

    def token_logits(self, x: Tensor) -> Tensor:
        """(N, L, V) next-token logits."""
        ids, attention, _ = self._split(x)
        return self.model(input_ids=ids, attention_mask=attention).logits

    def _token_logprobs(self, ids: Tensor, answer: Tensor, logits: Tensor) -> Tensor:
        nll = F.cross_entropy(logits.flatten(0, 1).float(), ids[:, 1:].flatten(), reduction="none")
        return -nll.view(len(ids), -1) * answer[:, 1:]

    @staticmethod
    def _all_right(ids: Tensor, answer: Tensor, logits: Tensor) -> Tensor:
        return ((logits.argmax(-1) == ids[:, 1:]) | (answer[:, 1:] == 0)).all(1)

    def answer_token_logprobs(self, x: Tensor) -> Tensor:
        """(N, L - 1) log-probability of each next token, 0 outside the answer."""
        ids, _, answer = self._split(x)
        return self._token_logprobs(ids, answer, self.token_logits(x)[:, :-1])

    def answer_log_likelihood(self, x: Tensor) -> Tensor:
        """Per-sample log p(answer | prompt): the sum of the answer tokens' log-probabilities."""
        return self.answer_token_logprobs(x).sum(1)

    def answer_length(self, x: Tensor) -> Tensor:
        """Per-sample number of answer tokens (those :meth:`answer_log_likelihood` sums over)."""
        return x[:, 1, 1:].sum(1).float()

    def answer_correct(self, x: Tensor) -> Tensor:
        """Per-sample bool: the greedy next token is right at every answer position (teacher forcing)."""
        ids, _, answer = self._split(x)
        return self._all_right(ids, answer, self.token_logits(x)[:, :-1])

    def answer_scores(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """:meth:`answer_token_logprobs` and :meth:`answer_correct` from one forward pass (evaluation)."""
        ids, _, answer = self._split(x)
        logits = self.token_logits(x)[:, :-1]
        return self._token_logprobs(ids, answer, logits), self._all_right(ids, answer, logits)

    def hidden_states(self, x: Tensor, pool: str = "mean") -> list[Tensor]:
        """Per layer (embeddings first) the hidden state of each sequence: the mean over its tokens
        (``pool="mean"``) or the state at its last token (``"last"``, what predicts the next token): (N, H) each."""
        ids, attention, _ = self._split(x)
        out = self.model(input_ids=ids, attention_mask=attention, output_hidden_states=True)
        if pool == "last":
            last = attention.sum(1).clamp_min(1) - 1
            return [h[torch.arange(len(ids), device=h.device), last] for h in out.hidden_states]
        weights = attention[..., None].to(out.hidden_states[0].dtype)
        return [(h * weights).sum(1) / weights.sum(1).clamp_min(1) for h in out.hidden_states]

    def forward_features(self, x: Tensor) -> Tensor:
        return self.hidden_states(x)[-1]

    @torch.no_grad()
    def generate(self, prompts: list[Tensor], max_new_tokens: int = 32) -> list[Tensor]:
        """Greedy continuations of token-id prompts (1-D tensors), batched with left padding; each output
        stops at (and excludes) the end-of-sequence token."""
        if not prompts:
            return []
        width = max(len(p) for p in prompts)
        device = next(self.model.parameters()).device
        ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        attention = torch.zeros_like(ids)
        for i, p in enumerate(prompts):
            ids[i, width - len(p) :], attention[i, width - len(p) :] = p, 1
        budget = max(1, min(max_new_tokens, self.length - width))
        out = self.model.generate(
            input_ids=ids.to(device),
            attention_mask=attention.to(device),
            max_new_tokens=budget,
            do_sample=False,
            pad_token_id=self.pad_id,
            eos_token_id=self.tokenizer.eos_token_id,
        )[:, width:].cpu()
        eos = self.tokenizer.eos_token_id
        result = []
        for row in out:
            stop = (row == eos).nonzero()
            result.append(row[: int(stop[0])] if len(stop) else row[row != self.pad_id])
        return result
