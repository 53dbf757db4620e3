"""The token canvas a masked diffusion LM reads and writes (engines and trainer share it).

Canvas layout for prompt p and answer a, with max_prompt_tokens P and gen_length G (total length P + G):

    [PAD]*k [BOS] p [SEP] | a [EOS] [EOS] ...
    '---- exactly P -----'  '-- exactly G --'

The prompt is left-padded so the answer region always starts at index P; the attention mask is False on [PAD].
Answers shorter than G are filled with [EOS] to the end (LLaDA's convention: the model learns to emit trailing
[EOS]); at generation time the answer region starts as all [MASK].

A public masked LM's tokenizer works too where it lacks our names: [CLS] stands in for [BOS], and [SEP] for
[EOS] when there is no [EOS] (BERT-style vocabularies); a tokenizer without a mask token is refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase


class PromptTooLong(ValueError):
    """A prompt does not fit the canvas's prompt region; carries the numbers so callers can phrase it."""

    def __init__(self, index: int, tokens: int, budget: int, max_prompt_tokens: int) -> None:
        self.index, self.tokens, self.budget = index, tokens, budget
        super().__init__(
            f"prompt {index} is {tokens} tokens but only {budget} fit (max_prompt_tokens {max_prompt_tokens} "
            "minus [BOS] and [SEP]); shorten the prompt or raise max_prompt_tokens"
        )


@dataclass(frozen=True)
class CanvasTokens:
    """The ids the canvas uses; bos/sep None when the vocabulary has neither name (they are then left out)."""

    pad: int
    bos: int | None
    sep: int | None
    eos: int
    mask: int

    @property
    def prompt_overhead(self) -> int:
        return (self.bos is not None) + (self.sep is not None)


def canvas_tokens(tokenizer: PreTrainedTokenizerBase) -> CanvasTokens:
    """Our specials, or their BERT-style stand-ins; ValueError naming what is missing."""

    def first(*names: str) -> int | None:
        for name in names:
            token_id = getattr(tokenizer, f"{name}_token_id", None)
            if token_id is not None:
                return token_id
        return None

    mask = first("mask")
    if mask is None:
        raise ValueError("the tokenizer has no mask token; a masked diffusion LM needs one (set tokenizer.mask_token)")
    eos = first("eos", "sep")
    if eos is None:
        raise ValueError("the tokenizer has neither an [EOS] nor a [SEP] token to end answers with")
    pad = first("pad", "eos")
    return CanvasTokens(pad=pad, bos=first("bos", "cls"), sep=first("sep"), eos=eos, mask=mask)


def _encode(tokenizer: PreTrainedTokenizerBase, texts: list[str]) -> list[list[int]]:
    return tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []


def _check_texts(texts: Sequence[str], what: str) -> None:
    if isinstance(texts, str):
        raise TypeError(f"{what} must be a list of strings, not a single string; wrap it: [{what[:-1]}]")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"{what[:-1]} {i} is {type(text).__name__}, expected str")


def _prompt_rows(tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str], gen_length: int, max_prompt_tokens: int):
    _check_texts(prompts, "prompts")
    if not prompts:
        raise ValueError("prompts is empty; pass at least one prompt")
    if gen_length < 1:
        raise ValueError(f"gen_length must be at least 1, got {gen_length}")
    ids = canvas_tokens(tokenizer)
    if max_prompt_tokens < ids.prompt_overhead + 1:
        raise ValueError(
            f"max_prompt_tokens must leave room for [BOS], [SEP] and one prompt token: at least {ids.prompt_overhead + 1}, "
            f"got {max_prompt_tokens}"
        )
    for i, prompt in enumerate(prompts):
        if not prompt.strip():
            raise ValueError(f"prompt {i} is empty; write a question or the start of a sentence")
    budget = max_prompt_tokens - ids.prompt_overhead
    rows = []
    for i, tokens in enumerate(_encode(tokenizer, list(prompts))):
        if len(tokens) > budget:
            raise PromptTooLong(i, len(tokens), budget, max_prompt_tokens)
        head = [ids.bos] if ids.bos is not None else []
        tail = [ids.sep] if ids.sep is not None else []
        rows.append(head + tokens + tail)
    return ids, rows


def _canvas(ids: CanvasTokens, rows: list[list[int]], max_prompt_tokens: int, gen_length: int):
    length = max_prompt_tokens + gen_length
    input_ids = torch.full((len(rows), length), ids.pad, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), length), dtype=torch.bool)
    for b, row in enumerate(rows):
        start = max_prompt_tokens - len(row)
        input_ids[b, start:max_prompt_tokens] = torch.tensor(row, dtype=torch.long)
        attention_mask[b, start:] = True
    return input_ids, attention_mask


def build_canvas(
    tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str], gen_length: int, max_prompt_tokens: int
) -> tuple[torch.LongTensor, torch.BoolTensor]:
    """Prompts laid out for generation: (input_ids (B, P+G) with the answer region all [MASK], attention_mask (B, P+G))."""
    ids, rows = _prompt_rows(tokenizer, prompts, gen_length, max_prompt_tokens)
    input_ids, attention_mask = _canvas(ids, rows, max_prompt_tokens, gen_length)
    input_ids[:, max_prompt_tokens:] = ids.mask
    return input_ids, attention_mask


def encode_examples(
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    answers: Sequence[str],
    gen_length: int,
    max_prompt_tokens: int,
) -> tuple[torch.LongTensor, torch.BoolTensor]:
    """Training rows: the canvas with each answer written in its region and [EOS]-filled to the end.

    Every answer keeps at least one [EOS], so it may take at most gen_length - 1 tokens (see truncate_to_tokens).
    """
    _check_texts(answers, "answers")
    if len(prompts) != len(answers):
        raise ValueError(f"got {len(prompts)} prompts but {len(answers)} answers; pass one answer per prompt")
    ids, rows = _prompt_rows(tokenizer, prompts, gen_length, max_prompt_tokens)
    input_ids, attention_mask = _canvas(ids, rows, max_prompt_tokens, gen_length)
    input_ids[:, max_prompt_tokens:] = ids.eos
    for b, tokens in enumerate(_encode(tokenizer, list(answers))):
        if len(tokens) > gen_length - 1:
            raise ValueError(
                f"answer {b} is {len(tokens)} tokens but gen_length {gen_length} leaves room for {gen_length - 1} "
                f"before the closing [EOS]; truncate it first (truncate_to_tokens) or raise gen_length"
            )
        if tokens:
            input_ids[b, max_prompt_tokens : max_prompt_tokens + len(tokens)] = torch.tensor(tokens, dtype=torch.long)
    return input_ids, attention_mask


def decode_answers(tokenizer: PreTrainedTokenizerBase, ids: torch.Tensor, prompt_tokens: int) -> list[str]:
    """The text of each row's answer region (from index `prompt_tokens`) up to its first [EOS], specials skipped, stripped.

    [MASK] still left in the region is skipped like any special token, so a half-decoded canvas reads as the words so far.
    """
    if ids.dim() != 2:
        raise ValueError(f"ids must be (batch, length), got shape {tuple(ids.shape)}")
    if not 0 <= prompt_tokens <= ids.shape[1]:
        raise ValueError(f"prompt_tokens must be in [0, {ids.shape[1]}] for rows of length {ids.shape[1]}, got {prompt_tokens}")
    eos = canvas_tokens(tokenizer).eos
    rows = []
    for row in ids[:, prompt_tokens:].tolist():
        rows.append(row[: row.index(eos)] if eos in row else row)
    texts = tokenizer.batch_decode(rows, skip_special_tokens=True, clean_up_tokenization_spaces=False)
    return [text.strip() for text in texts]


def count_tokens(tokenizer: PreTrainedTokenizerBase, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])
