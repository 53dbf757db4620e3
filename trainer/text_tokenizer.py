"""The text world's BPE tokenizer.

The tokenizer is byte-level BPE trained with the `tokenizers` library and wrapped as a transformers
`PreTrainedTokenizerFast`, so it saves with `save_pretrained` beside the model and loads with `AutoTokenizer`.
Digits are always single tokens (a leading space stays on the first digit, "Ġ7"), so "147" is three tokens and
column arithmetic is learnable; byte-level pieces make decode() reproduce any text exactly, and nothing is
lower-cased. Encoding adds no special tokens by itself: the canvas functions place them.

The token canvas (its layout, building and reading it) is in engines/text_canvas.py; its names are
re-exported here for the trainer.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

from engines.text_canvas import (  # noqa: F401  (re-exported: the trainer's one import for text)
    CanvasTokens,
    build_canvas,
    canvas_tokens,
    count_tokens,
    decode_answers,
    encode_examples,
)

SPECIAL_TOKENS = {
    "pad_token": "[PAD]",
    "bos_token": "[BOS]",
    "eos_token": "[EOS]",
    "sep_token": "[SEP]",
    "mask_token": "[MASK]",
    "unk_token": "[UNK]",
}
DEFAULT_VOCAB_SIZE = 2048
_BYTE_ALPHABET = pre_tokenizers.ByteLevel.alphabet()
MIN_VOCAB_SIZE = len(_BYTE_ALPHABET) + len(SPECIAL_TOKENS)  # every byte plus the specials, before any merge


def train_tokenizer(texts: Iterable[str], vocab_size: int = DEFAULT_VOCAB_SIZE) -> PreTrainedTokenizerFast:
    """Byte-level BPE with individual digits, trained on `texts`; specials take ids 0-5 in SPECIAL_TOKENS order."""
    if isinstance(texts, str):
        raise TypeError("texts must be an iterable of strings, not one string (it would train on single characters)")
    if vocab_size < MIN_VOCAB_SIZE:
        raise ValueError(f"vocab_size must be at least {MIN_VOCAB_SIZE} (256 bytes + 6 special tokens), got {vocab_size}")
    texts = [t for t in texts if t]
    if not texts:
        raise ValueError("train_tokenizer got no non-empty texts; pass e.g. trainer.worlds.textworld.corpus(n)")
    tokenizer = Tokenizer(models.BPE(unk_token=SPECIAL_TOKENS["unk_token"]))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            # " 147" -> " 1", "4", "7": one token per digit, the space riding on the first (cheaper than a lone space).
            pre_tokenizers.Split(Regex(r" ?\d"), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS.values()),
        initial_alphabet=_BYTE_ALPHABET,
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        clean_up_tokenization_spaces=False,  # transformers would otherwise rewrite " ." to "." and break round trips
        padding_side="left",
        **SPECIAL_TOKENS,
    )


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerFast:
    """A tokenizer saved by `save_pretrained` (ours or a checkpoint's); it must have a mask token."""
    path = Path(path)
    if not (path / "tokenizer.json").is_file():
        raise FileNotFoundError(f"no tokenizer.json in {path}; save one with train_tokenizer(...).save_pretrained({str(path)!r})")
    tokenizer = PreTrainedTokenizerFast.from_pretrained(str(path))
    canvas_tokens(tokenizer)  # fail now, not mid-generation, if it cannot lay out a canvas
    return tokenizer


def truncate_to_tokens(tokenizer: PreTrainedTokenizerBase, text: str, max_tokens: int) -> str:
    """`text` unchanged if it fits in `max_tokens` tokens, else its longest whole-word prefix that does."""
    if max_tokens < 0:
        raise ValueError(f"max_tokens must be >= 0, got {max_tokens}")
    if count_tokens(tokenizer, text) <= max_tokens:
        return text
    words = text.split()
    lo, hi = 0, len(words)  # invariant: words[:lo] fits, words[:hi] does not (hi = all words, checked above)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if count_tokens(tokenizer, " ".join(words[:mid])) <= max_tokens:
            lo = mid
        else:
            hi = mid
    if lo:
        return " ".join(words[:lo])
    # Not even the first word fits: cut inside it at a token boundary.
    return tokenizer.decode(tokenizer(text, add_special_tokens=False)["input_ids"][:max_tokens]).strip()
