"""The masked-diffusion LM network and `load_text_model`: tiny random models built here, everything offline."""

import json

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoConfig, AutoModelForMaskedLM, BertConfig, BertForMaskedLM, PreTrainedTokenizerFast

from engines.dllm import (
    KIND_MASKED_LM,
    KIND_OURS,
    MaskedDiffusionLM,
    MaskedDiffusionLMConfig,
    context_outside,
    count_parameters,
    load_text_model,
)
from engines.errors import CheckpointError

SPECIALS = ["[PAD]", "[BOS]", "[EOS]", "[SEP]", "[MASK]", "[UNK]"]
PAD, BOS, EOS, SEP, MASK, UNK = range(6)
WORDS = "the a cat dog sat on mat is what how many plus minus equals yes no sort reverse".split()


def make_tokenizer(with_mask: bool = True) -> PreTrainedTokenizerFast:
    """A word-level tokenizer with the canvas's special tokens (ids 0-5, in SPECIALS order)."""
    vocab = {token: i for i, token in enumerate(SPECIALS + WORDS + list("0123456789") + [".", ",", "?", "#"])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace(), pre_tokenizers.Digits(individual_digits=True)])
    specials = {"pad_token": "[PAD]", "bos_token": "[BOS]", "eos_token": "[EOS]", "sep_token": "[SEP]", "unk_token": "[UNK]"}
    if with_mask:
        specials["mask_token"] = "[MASK]"
    return PreTrainedTokenizerFast(tokenizer_object=backend, **specials)


def tiny_config(vocab_size: int, **overrides) -> MaskedDiffusionLMConfig:
    options = dict(
        vocab_size=vocab_size,
        hidden_size=32,
        num_layers=2,
        num_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        mask_token_id=MASK,
        pad_token_id=PAD,
        eos_token_id=EOS,
        bos_token_id=BOS,
        sep_token_id=SEP,
    )
    return MaskedDiffusionLMConfig(**{**options, **overrides})


@pytest.fixture(scope="module")
def tokenizer():
    return make_tokenizer()


@pytest.fixture(scope="module")
def model(tokenizer):
    torch.manual_seed(0)
    return MaskedDiffusionLM(tiny_config(len(tokenizer))).eval()


def canvas(vocab: int, batch: int = 2, prompt: int = 8, gen: int = 16, pads: int = 3, seed: int = 0):
    """Random tokens with [PAD] at the first `pads` positions of row 0 and a masked answer region."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(6, vocab, (batch, prompt + gen), generator=g)
    ids[:, prompt:] = MASK
    ids[0, :pads] = PAD
    return ids, ids != PAD


@torch.no_grad()
def test_forward_shapes_kv_and_tied_embeddings(model, tokenizer):
    ids, mask = canvas(len(tokenizer))
    out = model(ids, attention_mask=mask, return_kv=True)
    assert out.logits.shape == (2, 24, len(tokenizer))
    assert torch.isfinite(out.logits).all()
    assert len(out.kv) == 2 and out.kv[0][0].shape == (2, 2, 24, 16) and out.kv[0][1].shape == (2, 2, 24, 16)
    assert model(ids, attention_mask=mask).kv is None
    assert model.lm_head.weight is model.embed_tokens.weight
    assert model.config.num_hidden_layers == 2 and model.config.num_attention_heads == 2  # attribute_map


@torch.no_grad()
def test_padding_keys_are_ignored(model, tokenizer):
    ids, mask = canvas(len(tokenizer))
    other = ids.clone()
    other[0, :3] = torch.tensor([7, 8, 9])  # different tokens, still masked out as padding
    a = model(ids, attention_mask=mask).logits
    b = model(other, attention_mask=mask).logits
    torch.testing.assert_close(a[0, 3:], b[0, 3:], atol=1e-6, rtol=0)
    c = model(other).logits  # no mask: the same tokens now count
    assert (a[0, 3:] - c[0, 3:]).abs().max() > 1e-4


@torch.no_grad()
def test_attention_is_bidirectional(model, tokenizer):
    ids, mask = canvas(len(tokenizer))
    later = ids.clone()
    later[:, -1] = 7
    first = model(ids, attention_mask=mask).logits[:, 3]
    assert (first - model(later, attention_mask=mask).logits[:, 3]).abs().max() > 1e-4


@torch.no_grad()
@pytest.mark.parametrize("block", [(8, 12), (12, 24), (0, 4)])
def test_block_call_with_fresh_context_matches_full_forward(model, tokenizer, block):
    start, end = block
    ids, mask = canvas(len(tokenizer))
    ids[:, 10] = 9  # some answer tokens already committed
    full = model(ids, attention_mask=mask, return_kv=True)
    context = context_outside(full.kv, mask, start, end)
    assert context[0][0].shape[2] == 24 - (end - start)
    positions = torch.arange(start, end).expand(2, -1)
    part = model(ids[:, start:end], attention_mask=mask[:, start:end], position_ids=positions, context=context)
    assert part.logits.shape == (2, end - start, len(tokenizer))
    torch.testing.assert_close(part.logits, full.logits[:, start:end], atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_stale_context_is_only_an_approximation(model, tokenizer):
    """The dual cache does not see tokens changed inside the block after it was computed."""
    ids, mask = canvas(len(tokenizer))
    context = context_outside(model(ids, attention_mask=mask, return_kv=True).kv, mask, 8, 16)
    ids[:, 8:12] = torch.tensor([7, 8, 9, 10])
    positions = torch.arange(8, 16).expand(2, -1)
    cached = model(ids[:, 8:16], attention_mask=mask[:, 8:16], position_ids=positions, context=context).logits
    fresh = model(ids, attention_mask=mask).logits[:, 8:16]
    assert (cached - fresh).abs().max() > 1e-5


def test_forward_rejects_bad_inputs(model, tokenizer):
    ids, mask = canvas(len(tokenizer))
    context = context_outside(model(ids, attention_mask=mask, return_kv=True).kv, mask, 8, 16)
    with pytest.raises(ValueError, match="position_ids are required"):
        model(ids[:, 8:16], context=context)
    with pytest.raises(ValueError, match="context has 1 layers"):
        model(ids[:, 8:16], position_ids=torch.arange(8, 16).expand(2, -1), context=context[:1])
    with pytest.raises(ValueError, match="beyond the model's context of 64"):
        model(torch.full((1, 65), 7))
    with pytest.raises(ValueError, match="beyond the model's context"):
        model(ids[:, :4], position_ids=torch.full((2, 4), 64))
    with pytest.raises(ValueError, match="attention_mask shape"):
        model(ids, attention_mask=mask[:, :5])
    with pytest.raises(ValueError, match=r"shape \(batch, length\)"):
        model(ids[0])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"hidden_size": 30, "num_heads": 4}, "divisible by num_heads"),
        ({"hidden_size": 12, "num_heads": 4}, "must be even"),
        ({"num_layers": 0}, "num_layers must be a positive integer"),
        ({"mask_token_id": 999}, "mask_token_id=999 is outside the vocabulary"),
        ({"dropout": 1.0}, "dropout must be in"),
    ],
)
def test_config_validation(overrides, message):
    with pytest.raises(ValueError, match=message):
        tiny_config(40, **overrides)


def test_default_config_is_a_small_real_model():
    with torch.device("meta"):
        model = MaskedDiffusionLM(MaskedDiffusionLMConfig(vocab_size=2048))
    assert 10_000_000 <= count_parameters(model) <= 20_000_000  # 11.4 M with the default shape


@torch.no_grad()
def test_save_and_load_round_trip(model, tokenizer, tmp_path):
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file() and not list(tmp_path.glob("*.bin"))
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "distillery_mdlm"
    loaded, loaded_tokenizer, kind = load_text_model(tmp_path, "cpu")
    assert kind == KIND_OURS and isinstance(loaded, MaskedDiffusionLM) and not loaded.training
    assert loaded_tokenizer.mask_token_id == MASK and loaded_tokenizer.pad_token_id == PAD
    assert loaded.lm_head.weight is loaded.embed_tokens.weight
    ids, mask = canvas(len(tokenizer))
    torch.testing.assert_close(loaded(ids, attention_mask=mask).logits, model(ids, attention_mask=mask).logits)
    # The auto classes know the model type too.
    assert type(AutoModelForMaskedLM.from_pretrained(tmp_path)) is MaskedDiffusionLM
    assert isinstance(AutoConfig.for_model("distillery_mdlm"), MaskedDiffusionLMConfig)


@torch.no_grad()
def test_loads_a_transformers_masked_lm(tokenizer, tmp_path):
    torch.manual_seed(0)
    bert = BertForMaskedLM(
        BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    )
    bert.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    loaded, loaded_tokenizer, kind = load_text_model(str(tmp_path))
    assert kind == KIND_MASKED_LM and type(loaded) is BertForMaskedLM
    assert loaded_tokenizer.mask_token_id == MASK
    ids, mask = canvas(len(tokenizer))
    assert loaded(input_ids=ids, attention_mask=mask.long()).logits.shape == (2, 24, len(tokenizer))


def test_missing_directory_and_file(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_text_model(tmp_path / "nowhere")
    (tmp_path / "weights.txt").write_text("x")
    with pytest.raises(CheckpointError, match="is a file"):
        load_text_model(tmp_path / "weights.txt")


def test_directory_without_config(model, tmp_path):
    model.save_pretrained(tmp_path)
    (tmp_path / "config.json").unlink()
    with pytest.raises(CheckpointError, match="has no config.json"):
        load_text_model(tmp_path)


def test_truncated_weights(model, tokenizer, tmp_path):
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="may be truncated"):
        load_text_model(tmp_path)


def test_missing_weights_are_an_error_not_a_random_init(model, tokenizer, tmp_path):
    from safetensors.torch import load_file, save_file

    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    del weights["layers.1.mlp.down_proj.weight"]
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"lacks weights for 1 parameters \(layers.1.mlp.down_proj.weight\)"):
        load_text_model(tmp_path)
    weights["layers.1.mlp.down_proj.weight"] = torch.zeros(3, 3)
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="cannot load the text model"):
        load_text_model(tmp_path)


def test_pickled_weights_are_refused(model, tmp_path):
    model.config.save_pretrained(tmp_path)
    (tmp_path / "pytorch_model.bin").write_bytes(b"never unpickled")
    with pytest.raises(CheckpointError, match="pickle files are never loaded"):
        load_text_model(tmp_path)


def test_hub_id_offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointError, match="not available offline"):
        load_text_model("distillery-tests/no-such-model")


def test_tokenizer_without_mask_token(model, tmp_path):
    model.save_pretrained(tmp_path)
    make_tokenizer(with_mask=False).save_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match="has no mask token"):
        load_text_model(tmp_path)


def test_tokenizer_and_model_disagree_on_mask(tokenizer, tmp_path):
    MaskedDiffusionLM(tiny_config(len(tokenizer), mask_token_id=UNK)).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match="do not belong together"):
        load_text_model(tmp_path)


def test_remote_code_needs_consent(model, tokenizer, tmp_path):
    tokenizer.save_pretrained(tmp_path)
    BertForMaskedLM(BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=1, num_attention_heads=2)).save_pretrained(
        tmp_path
    )
    config = json.loads((tmp_path / "config.json").read_text())
    config["auto_map"] = {"AutoModel": "modeling_llada.LLaDAModelLM"}
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="trust_remote_code=True"):
        load_text_model(tmp_path)
