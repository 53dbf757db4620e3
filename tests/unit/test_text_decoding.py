"""The masked-diffusion decoders: LLaDA fixed steps, confidence threshold, dual KV cache, on tiny random
models (ours and a BERT masked LM) and on scripted models whose predictions the test chooses."""

from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import BertConfig, BertForMaskedLM, PreTrainedTokenizerFast

from engines.dllm import KIND_MASKED_LM, KIND_OURS, MaskedDiffusionLM, MaskedDiffusionLMConfig, load_text_model
from engines.text_decoding import DecodeConfig, decode, decode_final, num_transfer_tokens

SPECIALS = ["[PAD]", "[BOS]", "[EOS]", "[SEP]", "[MASK]", "[UNK]"]
PAD, BOS, EOS, SEP, MASK, UNK = range(6)
WORDS = "the a cat dog sat on mat is what how many plus minus equals yes no".split() + list("0123456789")
PROMPT = 8  # prompt tokens in every canvas here


def make_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {token: i for i, token in enumerate(SPECIALS + WORDS)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace(), pre_tokenizers.Digits(individual_digits=True)])
    specials = dict(pad_token="[PAD]", bos_token="[BOS]", eos_token="[EOS]", sep_token="[SEP]", mask_token="[MASK]")
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", **specials)


def build_canvas(tokenizer, prompts: list[str], gen_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[PAD]* [BOS] prompt [SEP] | [MASK] * gen_length (the shared canvas layout)."""
    rows = []
    for prompt in prompts:
        ids = [BOS, *tokenizer(prompt, add_special_tokens=False)["input_ids"], SEP]
        rows.append([PAD] * (PROMPT - len(ids)) + ids + [MASK] * gen_length)
    ids = torch.tensor(rows)
    return ids, ids != PAD


@pytest.fixture(scope="module")
def tokenizer():
    return make_tokenizer()


@pytest.fixture(scope="module")
def saved(tokenizer, tmp_path_factory):
    """A tiny random MaskedDiffusionLM and a tiny random BERT, saved and loaded back through load_text_model."""
    root = tmp_path_factory.mktemp("text-models")
    torch.manual_seed(0)
    ours = MaskedDiffusionLM(
        MaskedDiffusionLMConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            num_layers=2,
            num_heads=2,
            intermediate_size=64,
            max_position_embeddings=64,
            mask_token_id=MASK,
            pad_token_id=PAD,
            eos_token_id=EOS,
        )
    )
    bert = BertForMaskedLM(
        BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    )
    loaded = {}
    for name, network in (("ours", ours), ("bert", bert)):
        network.save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
        loaded[name] = load_text_model(root / name, "cpu")
    assert loaded["ours"][2] == KIND_OURS and loaded["bert"][2] == KIND_MASKED_LM
    return {name: model for name, (model, _, _) in loaded.items()}


@pytest.fixture(scope="module")
def model(saved):
    return saved["ours"]


@pytest.fixture(scope="module")
def prompts(tokenizer):
    return build_canvas(tokenizer, ["the cat sat on the mat", "how many 12 plus 7"], 16)


def run(model, canvas, config, seed=0, **kwargs):
    ids, mask = canvas
    states = list(decode(model, ids, mask, PROMPT, config, torch.Generator().manual_seed(seed), mask_token_id=MASK, **kwargs))
    return states


def check_finished(states, canvas, gen_length):
    """Invariants of any complete decode."""
    ids, _ = canvas
    final = states[-1]
    assert final.done and not any(s.done for s in states[:-1])
    assert not (final.tokens == MASK).any(), "a [MASK] survived decoding"
    assert not (final.tokens[:, PROMPT:] == PAD).any(), "[PAD] was committed"
    assert torch.equal(final.tokens[:, :PROMPT], ids[:, :PROMPT]), "the prompt changed"
    assert final.committed_step.shape == (ids.shape[0], gen_length)
    assert (final.committed_step >= 1).all() and (final.committed_step <= final.step).all()
    assert [s.step for s in states[:-1]] == list(range(1, final.step + 1))
    for state in states:  # the canvas and the commit record agree after every step
        assert torch.equal(state.tokens[:, PROMPT:] == MASK, state.committed_step == -1)
    return final


MODES = {
    "fixed": DecodeConfig(gen_length=16, block_length=8, steps=8),
    "fixed-cache": DecodeConfig(gen_length=16, block_length=8, steps=8, use_cache=True),
    "random": DecodeConfig(gen_length=16, block_length=4, steps=16, remasking="random"),
    "sampled": DecodeConfig(gen_length=16, block_length=16, steps=4, temperature=1.0),
    "threshold": DecodeConfig(gen_length=16, block_length=8, threshold=0.05),
    "threshold-cache": DecodeConfig(gen_length=16, block_length=4, threshold=0.05, use_cache=True),
}


@pytest.mark.parametrize("mode", list(MODES))
def test_every_mode_decodes_the_whole_answer(model, prompts, mode):
    config = MODES[mode]
    final = check_finished(run(model, prompts, config), prompts, 16)
    assert final.nfe == final.step
    if config.steps is not None:
        assert final.step == config.steps


@pytest.mark.parametrize("mode", ["fixed", "random", "threshold"])
def test_transformers_masked_lm_decodes(saved, prompts, mode):
    check_finished(run(saved["bert"], prompts, MODES[mode]), prompts, 16)


def test_cache_needs_a_model_with_context_support(saved, prompts):
    with pytest.raises(ValueError, match="use_cache=True needs a model that accepts a KV `context`"):
        run(saved["bert"], prompts, MODES["fixed-cache"])


def test_num_transfer_tokens_splits_evenly():
    masked = torch.zeros(3, 8, dtype=torch.bool)
    masked[0, :5] = True
    masked[1, :8] = True
    schedule = num_transfer_tokens(masked, 3)
    assert schedule.tolist() == [[2, 2, 1], [3, 3, 2], [0, 0, 0]]
    assert torch.equal(schedule.sum(1), masked.sum(1))


def test_fixed_steps_commit_exactly_the_schedule(model, prompts):
    states = run(model, prompts, DecodeConfig(gen_length=16, block_length=8, steps=6))
    check_finished(states, prompts, 16)
    masked = [(prompts[0][:, PROMPT:] == MASK).sum(1)] + [(s.tokens[:, PROMPT:] == MASK).sum(1) for s in states[:-1]]
    per_step = [(before - after).tolist() for before, after in zip(masked, masked[1:])]
    assert per_step == [[3, 3], [3, 3], [2, 2]] * 2
    # Semi-autoregressive: block 0 is finished before block 1 starts.
    assert (states[2].tokens[:, PROMPT + 8 :] == MASK).all() and not (states[2].tokens[:, PROMPT : PROMPT + 8] == MASK).any()


def test_threshold_one_commits_one_token_per_step(model, prompts):
    final = run(model, prompts, DecodeConfig(gen_length=16, block_length=8, threshold=1.0))[-1]
    assert final.step == 16
    assert sorted(final.committed_step[0].tolist()) == list(range(1, 17))


def test_low_threshold_takes_fewer_steps(model, prompts):
    """A random model's confidences are about 1/vocab: a threshold below that commits a block per step."""
    final = check_finished(run(model, prompts, DecodeConfig(gen_length=16, block_length=4, threshold=1e-4)), prompts, 16)
    assert final.step == 4 and final.nfe == 4
    assert final.committed_step[0].tolist() == [1] * 4 + [2] * 4 + [3] * 4 + [4] * 4


def test_same_seed_same_output_other_seed_differs(model, prompts):
    config = DecodeConfig(gen_length=16, block_length=8, steps=16, remasking="random", temperature=2.0)
    a, b, c = (run(model, prompts, config, seed)[-1] for seed in (1, 1, 2))
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.committed_step, b.committed_step)
    assert not torch.equal(a.committed_step, c.committed_step)


def test_greedy_decoding_needs_no_generator(model, prompts):
    ids, mask = prompts
    first = decode_final(model, ids, mask, PROMPT, MODES["fixed"], mask_token_id=MASK)
    again = run(model, prompts, MODES["fixed"], seed=123)[-1]
    assert torch.equal(first.tokens, again.tokens)


class CountingCalls:
    """Wraps a model and records the length of every call's input_ids and whether it used a context."""

    def __init__(self, model) -> None:
        self.model, self.calls = model, []
        self.config, self.supports_kv_context = model.config, True

    def parameters(self):
        return self.model.parameters()

    def __call__(self, **kwargs):
        self.calls.append((kwargs["input_ids"].shape[1], kwargs.get("context") is not None))
        return self.model(**kwargs)


def test_cache_is_exact_at_block_starts(model, prompts):
    """With one step per block every step starts a block, where the cache is fresh: identical output."""
    plain = run(model, prompts, DecodeConfig(gen_length=16, block_length=4, steps=4))
    cached = run(model, prompts, DecodeConfig(gen_length=16, block_length=4, steps=4, use_cache=True))
    for a, b in zip(plain, cached, strict=True):
        assert torch.equal(a.tokens, b.tokens) and torch.equal(a.committed_step, b.committed_step)


def test_cache_runs_only_the_block_between_refreshes(model, prompts):
    counting = CountingCalls(model)
    config = DecodeConfig(gen_length=16, block_length=4, steps=16, use_cache=True)
    states = run(counting, prompts, config)
    check_finished(states, prompts, 16)
    # Per block: one full-canvas call that refreshes the cache, then three calls over the block's 4 tokens.
    assert counting.calls == [(PROMPT + 16, False), (4, True), (4, True), (4, True)] * 4
    plain = run(model, prompts, DecodeConfig(gen_length=16, block_length=4, steps=16))
    assert torch.equal(plain[0].tokens, states[0].tokens)  # the first step of the first block is exact


class Scripted(torch.nn.Module):
    """A masked LM whose logits the test chooses: at position p, token favourite[p] with logit strength[p]."""

    def __init__(self, favourite: list[int], strength: list[float], vocab: int = 30) -> None:
        super().__init__()
        self.favourite, self.strength = torch.tensor(favourite), torch.tensor(strength)
        self.config = SimpleNamespace(vocab_size=vocab, pad_token_id=PAD, max_position_embeddings=64)
        self.calls = 0

    def forward(self, input_ids, attention_mask):
        self.calls += 1
        batch, length = input_ids.shape
        logits = torch.zeros(batch, length, self.config.vocab_size)
        logits[:, torch.arange(length), self.favourite] = self.strength
        return SimpleNamespace(logits=logits)


class ScriptedWithContext(Scripted):
    """Scripted, with the KV-context interface: its logits depend on positions only, so the cache is exact."""

    supports_kv_context = True

    def forward(self, input_ids, attention_mask, position_ids=None, context=None, return_kv=False):
        self.calls += 1
        batch, length = input_ids.shape
        positions = torch.arange(length).expand(batch, -1) if position_ids is None else position_ids
        if context is not None:
            assert len(context) == 1 and context[0][0].shape[2] + length == PROMPT + 16  # outside + block = canvas
        logits = torch.zeros(batch, length, self.config.vocab_size)
        logits.scatter_(2, self.favourite[positions][..., None], self.strength[positions][..., None])
        kv = ((torch.zeros(batch, 1, length, 2), torch.zeros(batch, 1, length, 2)),) if return_kv else None
        return SimpleNamespace(logits=logits, kv=kv)


def test_cached_decoding_equals_plain_decoding_when_the_cache_is_exact():
    favourite = [9] * PROMPT + list(range(10, 26))
    strength = [0.0] * PROMPT + [float(v) for v in torch.randperm(16, generator=torch.Generator().manual_seed(0)) + 1]
    for config in (
        DecodeConfig(gen_length=16, block_length=8, steps=16),
        DecodeConfig(gen_length=16, block_length=4, threshold=0.3),
    ):
        plain = run(ScriptedWithContext(favourite, strength), scripted_canvas(16), config)
        cached = run(ScriptedWithContext(favourite, strength), scripted_canvas(16), replace(config, use_cache=True))
        assert len(plain) == len(cached)
        for a, b in zip(plain, cached):
            assert torch.equal(a.tokens, b.tokens) and torch.equal(a.committed_step, b.committed_step)
        assert cached[-1].tokens[0, PROMPT:].tolist() == list(range(10, 26))


def scripted_canvas(gen_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.tensor([[PAD] * 5 + [BOS, 7, SEP] + [MASK] * gen_length])
    return ids, ids != PAD


def test_low_confidence_commits_the_most_confident_first():
    strength = [0.0] * PROMPT + [1.0, 5.0, 3.0, 4.0, 2.0, 6.0, 0.5, 7.0]
    net = Scripted([9] * (PROMPT + 8), strength)
    final = run(net, scripted_canvas(8), DecodeConfig(gen_length=8, block_length=8, steps=8))[-1]
    # Rank by confidence, highest first: one token per step.
    assert final.committed_step[0].tolist() == [7, 3, 5, 4, 6, 2, 8, 1]
    assert (final.tokens[0, PROMPT:] == 9).all() and net.calls == 8


def test_mask_and_pad_predictions_are_never_committed():
    favourite = [9] * PROMPT + [MASK, PAD, 11, MASK, PAD, 12, 13, 14]
    net = Scripted(favourite, [9.0] * (PROMPT + 8))
    for config in (
        DecodeConfig(gen_length=8, block_length=4, steps=4),
        DecodeConfig(gen_length=8, block_length=8, threshold=0.5),
    ):
        final = run(net, scripted_canvas(8), config)[-1]
        assert not torch.isin(final.tokens[0, PROMPT:], torch.tensor([MASK, PAD])).any()
        assert final.tokens[0, PROMPT + 2] == 11


def test_suppressed_tokens_are_never_committed():
    net = Scripted([UNK] * (PROMPT + 8), [9.0] * (PROMPT + 8))
    final = run(net, scripted_canvas(8), DecodeConfig(gen_length=8, block_length=8, steps=8), suppress_token_ids=[UNK])[-1]
    assert not (final.tokens[0, PROMPT:] == UNK).any()


def test_eos_fill_skips_the_blocks_after_the_answer():
    # The model is surest of an [EOS] at answer position 2; words elsewhere.
    favourite = [9] * PROMPT + [10, 11, EOS] + [12] * 13
    strength = [0.0] * PROMPT + [2.0, 1.0, 8.0] + [0.5] * 13
    config = DecodeConfig(gen_length=16, block_length=4, steps=16, eos_fill=True)
    net = Scripted(favourite, strength)
    final = run(net, scripted_canvas(16), config, eos_token_id=EOS)[-1]
    assert final.tokens[0, PROMPT:].tolist() == [10, 11] + [EOS] * 14
    assert final.committed_step[0].tolist() == [2, 3] + [1] * 14
    assert final.nfe == 3 and net.calls == 3  # 16 without eos_fill
    plain = Scripted(favourite, strength)
    assert run(plain, scripted_canvas(16), DecodeConfig(gen_length=16, block_length=4, steps=16))[-1].nfe == 16
    with pytest.raises(ValueError, match="eos_fill=True needs eos_token_id"):
        run(net, scripted_canvas(16), config)


def test_given_answer_tokens_are_kept(model, prompts):
    ids, mask = prompts
    ids = ids.clone()
    ids[:, PROMPT + 1] = 9  # partly decoded input (e.g. a state on a teacher trajectory)
    final = decode_final(model, ids, mask, PROMPT, MODES["fixed"], mask_token_id=MASK)
    assert (final.tokens[:, PROMPT + 1] == 9).all() and not (final.tokens == MASK).any()
    assert (final.committed_step[:, 1] == 0).all()
    assert (final.committed_step[:, :1] >= 1).all() and (final.committed_step[:, 2:] >= 1).all()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"gen_length": 0}, "DecodeConfig.gen_length must be a positive integer"),
        ({"block_length": 5}, r"DecodeConfig.block_length=5 must divide gen_length=48; choose one of \[1, 2, 3, 4, 6"),
        ({"steps": 40}, "DecodeConfig.steps=40 must be a multiple of the number of blocks"),
        ({"steps": 96}, "DecodeConfig.steps=96 must not exceed gen_length=48"),
        ({"steps": None}, "DecodeConfig.steps is required when threshold is None"),
        ({"steps": 0}, "DecodeConfig.steps must be a positive integer"),
        ({"threshold": 0.0}, r"DecodeConfig.threshold must be in \(0, 1\]"),
        ({"threshold": 1.5}, r"DecodeConfig.threshold must be in \(0, 1\]"),
        ({"remasking": "entropy"}, "DecodeConfig.remasking='entropy' is unknown"),
        ({"remasking": "random", "threshold": 0.9}, "remasking='random' has no confidence"),
        ({"temperature": -1.0}, "DecodeConfig.temperature must be a number >= 0"),
        ({"use_cache": "yes"}, "DecodeConfig.use_cache must be True or False"),
    ],
)
def test_bad_configs_name_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DecodeConfig(**kwargs)


def test_threshold_makes_steps_adaptive():
    assert DecodeConfig(threshold=0.9).steps is None
    assert DecodeConfig(threshold=0.9, steps=None).steps_per_block is None
    assert DecodeConfig(gen_length=48, block_length=16, steps=12).steps_per_block == 4


def test_bad_inputs(model, prompts):
    ids, mask = prompts
    config = MODES["fixed"]

    def go(*args, **kwargs):
        return list(decode(*args, **{"mask_token_id": MASK, **kwargs}))

    with pytest.raises(ValueError, match="prompt_tokens=7 \\+ gen_length=16 = 23"):
        go(model, ids, mask, 7, config)
    with pytest.raises(ValueError, match="beyond the model's context of 64 tokens"):
        long = DecodeConfig(gen_length=64, block_length=16, steps=16)
        go(model, torch.full((1, PROMPT + 64), MASK), torch.ones(1, PROMPT + 64, dtype=torch.bool), PROMPT, long)
    with pytest.raises(ValueError, match="attention_mask shape"):
        go(model, ids, mask[:, 1:], PROMPT, config)
    with pytest.raises(ValueError, match="prompt_tokens must be an integer >= 0"):
        go(model, ids, mask, -1, config)
    with pytest.raises(ValueError, match="pass a torch.Generator"):
        go(model, ids, mask, PROMPT, DecodeConfig(gen_length=16, block_length=8, steps=8, remasking="random"))
    with pytest.raises(ValueError, match="mask_token_id=999 is outside"):
        go(model, ids, mask, PROMPT, config, mask_token_id=999)
    with pytest.raises(ValueError, match="eos_token_id=4 is also a suppressed token"):
        go(model, ids, mask, PROMPT, config, eos_token_id=MASK)
