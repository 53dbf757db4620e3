"""The text world's BPE tokenizer and the token canvas: exact round trips, the layout, and clear refusals."""

import random

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from trainer import text_tokenizer as T
from trainer.worlds import textworld as W

QUESTION = "Tom has 12 apples. He buys 7 more and gives away 5. How many apples does he have now?"
ANSWER = "12 + 7 = 19. 19 - 5 = 14. #### 14"


@pytest.fixture(scope="module")
def texts() -> list[str]:
    """World texts (judged families only, so this file runs without the fortunes package)."""
    return W.corpus(2000, seed=0)


@pytest.fixture(scope="module")
def tok(texts) -> PreTrainedTokenizerFast:
    return T.train_tokenizer(texts, vocab_size=1024)


def ids_of(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def bert_style_tokenizer(with_mask: bool = True) -> PreTrainedTokenizerFast:
    """A WordLevel vocabulary with BERT's specials ([CLS]/[SEP], no [BOS]/[EOS]), built in code."""
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "is", "the", "sky", "blue", "?", "yes", "no"]
    core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    specials = dict(pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]")
    return PreTrainedTokenizerFast(tokenizer_object=core, **specials, **({"mask_token": "[MASK]"} if with_mask else {}))


# ----------------------------------------------------------------------------- the tokenizer


def test_special_tokens_come_first_and_vocab_is_as_asked(tok):
    assert len(tok) == 1024
    assert [tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.sep_token_id, tok.mask_token_id, tok.unk_token_id] == [
        0,
        1,
        2,
        3,
        4,
        5,
    ]
    assert {name: getattr(tok, name) for name in T.SPECIAL_TOKENS} == T.SPECIAL_TOKENS
    assert ids_of(tok, QUESTION) == tok.encode(QUESTION)  # encoding adds no specials by itself


def test_digits_are_single_tokens(tok):
    for token in tok.get_vocab():
        assert sum(c.isdigit() for c in token) <= 1, token
    pieces = tok.convert_ids_to_tokens(ids_of(tok, "147 + 28 = 175"))
    assert [p.lstrip("Ġ") for p in pieces if any(c.isdigit() for c in p)] == list("14728175")


def test_decode_round_trips_world_text_exactly(tok, texts):
    rng = random.Random(0)
    samples = texts[:300] + [e.answer for e in W.eval_examples(100)]
    samples += ["Hello , World . MiXeD case stays", "  leading and  double spaces ", "tabs\tand\nnewlines", "Caf\u00e9 \u2713"]
    for text in samples + [rng.choice(texts)[::-1] for _ in range(50)]:
        assert tok.decode(ids_of(tok, text)) == text


def test_training_is_deterministic(texts):
    a = T.train_tokenizer(texts[:500], vocab_size=512)
    b = T.train_tokenizer(texts[:500], vocab_size=512)
    assert a.get_vocab() == b.get_vocab()
    assert ids_of(a, QUESTION) == ids_of(b, QUESTION)


def test_save_and_load_keep_everything(tok, tmp_path):
    tok.save_pretrained(tmp_path)
    for loaded in (T.load_tokenizer(tmp_path), AutoTokenizer.from_pretrained(tmp_path)):
        assert ids_of(loaded, QUESTION) == ids_of(tok, QUESTION)
        assert loaded.mask_token_id == tok.mask_token_id == 4 and loaded.sep_token == "[SEP]"
        assert loaded.decode(ids_of(loaded, "a , b . c")) == "a , b . c"  # no "clean-up" of spaces after loading
        assert T.decode_answers(loaded, *T.encode_examples(loaded, [QUESTION], [ANSWER], 32, 40)[:1], 40) == [ANSWER]


def test_bad_training_input_is_refused(texts, tmp_path):
    with pytest.raises(TypeError, match="not one string"):
        T.train_tokenizer("just one text")
    with pytest.raises(ValueError, match="vocab_size must be at least 262"):
        T.train_tokenizer(texts, vocab_size=100)
    with pytest.raises(ValueError, match="no non-empty texts"):
        T.train_tokenizer(["", ""])
    with pytest.raises(FileNotFoundError, match="no tokenizer.json"):
        T.load_tokenizer(tmp_path / "missing")


# ----------------------------------------------------------------------------- the canvas


def test_build_canvas_layout(tok):
    prompts = ["Is 37 greater than 52?", QUESTION]
    ids, mask = T.build_canvas(tok, prompts, gen_length=16, max_prompt_tokens=32)
    assert ids.shape == mask.shape == (2, 48) and ids.dtype == torch.long and mask.dtype == torch.bool
    assert (ids[:, 32:] == tok.mask_token_id).all() and mask[:, 31:].all()
    for row, prompt in enumerate(prompts):
        tokens = ids_of(tok, prompt)
        start = 32 - len(tokens) - 2
        assert ids[row, :start].tolist() == [tok.pad_token_id] * start and not mask[row, :start].any()
        assert ids[row, start:32].tolist() == [tok.bos_token_id, *tokens, tok.sep_token_id]
        assert mask[row, start:].all()


def test_encode_examples_fills_answers_and_eos(tok):
    answers = [ANSWER, "", "no"]
    prompts = [QUESTION, "Empty answers are allowed", "Is 3 greater than 4?"]
    ids, mask = T.encode_examples(tok, prompts, answers, gen_length=24, max_prompt_tokens=32)
    canvas, canvas_mask = T.build_canvas(tok, prompts, 24, 32)
    assert torch.equal(ids[:, :32], canvas[:, :32]) and torch.equal(mask, canvas_mask)
    for row, answer in enumerate(answers):
        tokens = ids_of(tok, answer)
        assert ids[row, 32:].tolist() == tokens + [tok.eos_token_id] * (24 - len(tokens))
    assert T.decode_answers(tok, ids, 32) == answers


def test_answers_may_fill_all_but_one_position(tok):
    answer = " ".join(["word"] * 40)
    n = len(ids_of(tok, answer))
    ids, _ = T.encode_examples(tok, ["Say it"], [answer], gen_length=n + 1, max_prompt_tokens=8)
    assert ids[0, -1] == tok.eos_token_id and T.decode_answers(tok, ids, 8) == [answer]
    with pytest.raises(ValueError, match=rf"answer 0 is {n} tokens but gen_length {n} leaves room for {n - 1}"):
        T.encode_examples(tok, ["Say it"], [answer], gen_length=n, max_prompt_tokens=8)


def test_decode_answers_stops_at_eos_and_skips_masks(tok):
    ids, _ = T.build_canvas(tok, ["What is 2 + 3?"], gen_length=12, max_prompt_tokens=10)
    answer = ids_of(tok, "2 + 3 = 5. #### 5")
    ids[0, 10 : 10 + len(answer)] = torch.tensor(answer)
    assert T.decode_answers(tok, ids, 10) == ["2 + 3 = 5. #### 5"]  # trailing [MASK] skipped
    ids[0, 12] = tok.mask_token_id  # a hole in the middle reads as the words so far
    assert T.decode_answers(tok, ids, 10)[0].endswith("#### 5")
    ids[0, 10 + len(answer) :] = tok.eos_token_id
    ids[0, 10 + len(answer) + 1] = ids_of(tok, "7")[0]  # anything after the first [EOS] is ignored
    assert not T.decode_answers(tok, ids, 10)[0].endswith("7")
    with pytest.raises(ValueError, match=r"ids must be \(batch, length\)"):
        T.decode_answers(tok, ids[0], 10)
    with pytest.raises(ValueError, match="prompt_tokens must be in"):
        T.decode_answers(tok, ids, 99)


def test_bad_canvas_input_is_refused_with_reasons(tok):
    n = len(ids_of(tok, QUESTION))
    with pytest.raises(ValueError, match=rf"prompt 1 is {n} tokens but only 8 fit \(max_prompt_tokens 10"):
        T.build_canvas(tok, ["Hi there", QUESTION], 16, 10)
    with pytest.raises(ValueError, match="prompt 0 is empty"):
        T.build_canvas(tok, ["   "], 16, 32)
    with pytest.raises(ValueError, match="gen_length must be at least 1, got 0"):
        T.build_canvas(tok, [QUESTION], 0, 64)
    with pytest.raises(ValueError, match="max_prompt_tokens must leave room"):
        T.build_canvas(tok, [QUESTION], 16, 2)
    with pytest.raises(ValueError, match="prompts is empty"):
        T.build_canvas(tok, [], 16, 32)
    with pytest.raises(TypeError, match="not a single string"):
        T.build_canvas(tok, QUESTION, 16, 64)
    with pytest.raises(TypeError, match="prompt 0 is int"):
        T.build_canvas(tok, [7], 16, 64)
    with pytest.raises(ValueError, match="got 2 prompts but 1 answers"):
        T.encode_examples(tok, [QUESTION, QUESTION], [ANSWER], 32, 64)


def test_bert_style_vocabularies_use_cls_and_sep():
    bert = bert_style_tokenizer()
    ids, mask = T.build_canvas(bert, ["is the sky blue ?"], gen_length=4, max_prompt_tokens=8)
    vocab = bert.get_vocab()
    assert ids[0].tolist() == [vocab["[PAD]"], vocab["[CLS]"], 5, 6, 7, 8, 9, vocab["[SEP]"]] + [vocab["[MASK]"]] * 4
    assert mask[0].tolist() == [False] + [True] * 11
    ids, _ = T.encode_examples(bert, ["is the sky blue ?"], ["yes"], gen_length=4, max_prompt_tokens=8)
    assert ids[0, 8:].tolist() == [vocab["yes"]] + [vocab["[SEP]"]] * 3  # [SEP] ends answers when there is no [EOS]
    assert T.decode_answers(bert, ids, 8) == ["yes"]
    with pytest.raises(ValueError, match="no mask token"):
        T.build_canvas(bert_style_tokenizer(with_mask=False), ["is the sky blue ?"], 4, 8)


def test_truncate_to_tokens_keeps_whole_words(tok):
    text = "The quick brown fox jumps over the lazy dog and keeps running far away"
    assert T.truncate_to_tokens(tok, text, 1000) == text
    for limit in (3, 7, 12):
        cut = T.truncate_to_tokens(tok, text, limit)
        words = cut.split()
        assert text.startswith(cut) and 0 < T.count_tokens(tok, cut) <= limit
        assert T.count_tokens(tok, " ".join(text.split()[: len(words) + 1])) > limit  # the longest that fits
    assert T.count_tokens(tok, T.truncate_to_tokens(tok, "Supercalifragilisticexpialidocious", 2)) <= 2
    with pytest.raises(ValueError, match="max_tokens must be >= 0"):
        T.truncate_to_tokens(tok, text, -1)
