"""The text (masked-diffusion LM) side of the shared trainer: MDLM teacher and CD4LM student on
CPU, exact resume, the exported checkpoint through the registry and engine, public masked LMs,
and `bench text` writing its result files."""

import json
import math

import pytest
import torch

from engines.errors import CheckpointError, InvalidRequest
from engines.registry import Registry
from engines.requests import TextRequest
from trainer import checkpoint as ckpt
from trainer.config import ConfigError, load_config
from trainer.loop import train
from trainer.methods.cd4lm import CD4LMConfig, paired_masks
from trainer.text_task import mask_answers


@pytest.fixture(scope="module")
def text_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("text")
    teacher = train(load_config("configs/tiny-text-cpu.yaml", [f"--run_dir={root / 'teacher-run'}", "--max_steps=4"]))
    student = train(
        load_config(
            "configs/tiny-text-cd4lm-cpu.yaml",
            [f"--run_dir={root / 'student-run'}", f"--teacher={teacher['model']}", "--max_steps=2"],
        )
    )
    return root, teacher, student


def test_exports_are_save_pretrained_text_checkpoints_with_cards(text_models):
    root, teacher, student = text_models
    for summary, role, method in ((teacher, "teacher", "mdlm"), (student, "student", "cd4lm")):
        out = root / summary["model"].split("/")[-2] / "model"
        files = {p.name for p in out.iterdir()}
        assert {"config.json", "model.safetensors", "tokenizer.json", "card.json", "README.md"} <= files
        assert not [f for f in files if f.endswith((".bin", ".pt", ".pkl"))]
        card = json.loads((out / "card.json").read_text())
        assert (card["modality"], card["role"], card["method"]) == ("text", role, method)
        assert card["decoding"]["gen_length"] == 48 and card["decoding"]["max_prompt_tokens"] == 48
        assert set(card["metrics"]["training_eval"]) >= {"arithmetic", "sorting", "reversal", "logic", "overall"}
    student_card = json.loads((root / "student-run" / "model" / "card.json").read_text())
    assert student_card["teacher"] == "tiny-text" and student_card["decoding"]["threshold"] == 0.5


def test_resume_repeats_the_uninterrupted_run_exactly(tmp_path):
    straight = train(load_config("configs/tiny-text-cpu.yaml", [f"--run_dir={tmp_path / 'a'}", "--max_steps=3"]))
    train(load_config("configs/tiny-text-cpu.yaml", [f"--run_dir={tmp_path / 'b'}", "--max_steps=2"]))
    resumed = train(load_config("configs/tiny-text-cpu.yaml", [f"--run_dir={tmp_path / 'b'}", "--max_steps=3"]))
    assert straight["step"] == resumed["step"] == 3
    from safetensors.torch import load_file

    a = load_file(str(tmp_path / "a" / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "b" / "model" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert ckpt.latest_checkpoint(tmp_path / "b").name == "step-00000003"


def test_masking_leaves_the_prompt_and_follows_the_ratio():
    ids = torch.arange(10).repeat(4000, 1)
    ratio = torch.full((4000,), 0.3)
    noisy, masked = mask_answers(ids, 4, ratio, 99, torch.Generator().manual_seed(0))
    assert not masked[:, :4].any() and (noisy[:, :4] == ids[:, :4]).all()
    assert (noisy[masked] == 99).all() and (noisy[~masked] == ids[~masked]).all()
    assert masked[:, 4:].float().mean().item() == pytest.approx(0.3, abs=0.01)


def test_dscd_teacher_masks_are_subsets_of_the_student_masks():
    args = CD4LMConfig(min_student_ratio=0.5, max_student_ratio=0.5, min_teacher_fraction=0.5, max_teacher_fraction=0.5)
    m_s, m_t = paired_masks(2000, 20, 5, args, torch.Generator().manual_seed(0), "cpu")
    assert not (m_t & ~m_s).any() and not m_s[:, :5].any()
    assert m_s[:, 5:].float().mean().item() == pytest.approx(0.5, abs=0.02)
    assert m_t[:, 5:].float().mean().item() == pytest.approx(0.25, abs=0.02)


def test_block_structured_pairs_look_like_the_semi_autoregressive_decoders_states():
    """Every row: blocks before some block k clean for both models, blocks after it masked for both, the
    ratios inside block k; M_T still a subset of M_S and the prompt never masked."""
    args = CD4LMConfig(min_student_ratio=0.5, max_student_ratio=0.5, min_teacher_fraction=0.5, max_teacher_fraction=0.5)
    args.block_fraction = 1.0
    prompt, block, blocks = 5, 4, 3
    m_s, m_t = paired_masks(3000, prompt + block * blocks, prompt, args, torch.Generator().manual_seed(0), "cpu", block)
    assert not (m_t & ~m_s).any() and not m_s[:, :prompt].any()
    per_block = m_s[:, prompt:].view(-1, blocks, block)
    clean, full = ~per_block.any(-1), per_block.all(-1)
    first_masked = (~clean).float().argmax(-1)  # the current block (or the next, when the draw left it clean)
    later = (torch.arange(blocks).view(1, -1) > first_masked.view(-1, 1)) & ~clean.all(-1, keepdim=True)
    assert (full | ~later).all()  # after the current block: all masked, for the student and the teacher alike
    assert (m_t[:, prompt:].view(-1, blocks, block).all(-1) | ~later).all()
    inside = per_block.float().mean(-1).gather(1, first_masked.view(-1, 1))
    assert ((inside > 0) & (inside < 1)).float().mean().item() > 0.5  # the current block is usually part masked
    counts = torch.bincount(first_masked[~clean.all(-1)], minlength=blocks)
    assert counts.min().item() > 0.2 * counts.sum().item()  # every block is the current one about equally often


def test_no_block_pairs_means_the_old_masks_exactly():
    args = CD4LMConfig()
    plain = paired_masks(64, 20, 5, args, torch.Generator().manual_seed(3), "cpu")
    with_length = paired_masks(64, 20, 5, args, torch.Generator().manual_seed(3), "cpu", block_length=5)
    assert all(torch.equal(a, b) for a, b in zip(plain, with_length))


def test_block_fraction_outside_0_1_is_refused():
    with pytest.raises(ConfigError, match="block_fraction"):
        CD4LMConfig(block_fraction=1.5).check()


def test_mdlm_loss_of_a_know_nothing_model_is_log_vocab(text_models, monkeypatch):
    """With uniform logits every masked token costs log V; the 1/t weight makes the expectation exactly log V."""
    from trainer.methods.mdlm import MDLM

    root, _, _ = text_models
    config = load_config("configs/tiny-text-cpu.yaml", [f"--run_dir={root / 'teacher-run'}", "--batch_size=512"])
    method = MDLM(config, torch.device("cpu"))
    vocab = len(method.tokenizer)

    class Uniform(torch.nn.Module):
        def forward(self, input_ids, attention_mask=None):
            return type("Out", (), {"logits": torch.zeros(*input_ids.shape, vocab)})()

    batch = method.data_source()(0, 0, 0)
    loss, metrics = method.loss("model", {"model": Uniform()}, batch, torch.Generator().manual_seed(1))
    assert loss.item() == pytest.approx(math.log(vocab), rel=0.08)


def test_bad_text_configs_are_refused_before_training(tmp_path, text_models):
    def run(config: str, *extra: str) -> None:
        train(load_config(config, [f"--run_dir={tmp_path / 'bad'}", *extra]))

    with pytest.raises(ConfigError, match="block_length .* must divide gen_length"):
        run("configs/tiny-text-cpu.yaml", "--method_config.block_length=7")
    with pytest.raises(ConfigError, match="unknown text model_preset"):
        run("configs/tiny-text-cpu.yaml", "--model_preset=unet-s")
    with pytest.raises(ConfigError, match="cd4lm distils a teacher"):
        run("configs/tiny-text-cd4lm-cpu.yaml", "--teacher=")
    with pytest.raises(ConfigError, match="needs a text"):
        run("configs/tiny-text-cd4lm-cpu.yaml", "--teacher=checkpoints/shapes-teacher")
    with pytest.raises(ConfigError, match="threshold must be in"):
        run("configs/tiny-text-cd4lm-cpu.yaml", f"--teacher={text_models[1]['model']}", "--method_config.threshold=1.5")


@pytest.fixture(scope="module")
def registry(text_models):
    root, _, _ = text_models
    registry = Registry([root / "none"], device="cpu")
    registry.add(root / "teacher-run" / "model")
    registry.add(root / "student-run" / "model")
    return registry


def test_engine_streams_the_canvas_until_no_mask_is_left(registry):
    engine = registry.engine("tiny-text-cd4lm")
    states = list(engine.stream(TextRequest("Sort these numbers from smallest to largest: 4, 2, 9", seed=0)))
    assert len(states) >= 2 and states[-1].final and not any(s.final for s in states[:-1])
    masks = [sum(token == "[MASK]" for token in s.canvas) for s in states]
    assert masks[0] < 48 and masks == sorted(masks, reverse=True) and masks[-1] == 0
    assert all(step >= 0 for step in states[-1].committed_step) and len(states[-1].committed_step) == 48
    assert states[-1].timings.nfe == states[-1].step and states[-1].timings.nfe <= 48
    again = engine.generate(TextRequest("Sort these numbers from smallest to largest: 4, 2, 9", seed=0))
    assert again.canvas == states[-1].canvas  # same seed, same canvas


def test_fixed_steps_take_exactly_that_many_calls(registry):
    engine = registry.engine("tiny-text")
    result = engine.generate(TextRequest("Reverse the letters: a b c", steps=12, block_length=16, seed=3))
    assert result.timings.nfe == 12 and result.final and "[MASK]" not in result.canvas


@pytest.mark.parametrize(
    "request_kwargs, message",
    [
        ({"prompt": "word " * 80}, "the prompt is .* tokens long"),
        ({"prompt": "hi", "gen_length": 200}, "beyond the model's context"),
        ({"prompt": "hi", "gen_length": 48, "steps": 10}, "multiple of the number of blocks"),
        ({"prompt": "hi", "gen_length": 48, "block_length": 16, "steps": 96}, "cannot exceed the generation length"),
    ],
)
def test_requests_the_model_cannot_serve_get_clear_errors(registry, request_kwargs, message):
    engine = registry.engine("tiny-text")
    with pytest.raises(InvalidRequest, match=message):
        engine.generate(TextRequest(**request_kwargs))
    assert engine.generate(TextRequest("Is 3 greater than 2?", steps=48, seed=1)).final  # still serving


@pytest.mark.parametrize(
    "request_kwargs, message",
    [
        ({"prompt": "  "}, "prompt is empty"),
        ({"prompt": "hi", "gen_length": 0}, "generation length must be from 1"),
        ({"prompt": "hi", "gen_length": 48, "block_length": 10}, "does not divide the generation length 48"),
        ({"prompt": "hi", "threshold": 0.0}, r"threshold must be in \(0, 1\]"),
        ({"prompt": "hi", "threshold": 1.2}, r"threshold must be in \(0, 1\]"),
        ({"prompt": "hi", "remasking": "best"}, "remasking must be one of"),
    ],
)
def test_bad_text_requests_are_rejected_at_construction(request_kwargs, message):
    with pytest.raises(InvalidRequest, match=message):
        TextRequest(**request_kwargs)


def test_a_public_masked_lm_without_a_card_runs_the_same_decoders(tmp_path):
    """A tiny random BERT-style masked LM saved with save_pretrained, added by path like a public checkpoint."""
    from transformers import BertConfig, BertForMaskedLM

    from trainer.text_tokenizer import train_tokenizer
    from trainer.worlds import textworld

    tokenizer = train_tokenizer(textworld.corpus(500, seed=0), vocab_size=300)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    BertForMaskedLM(config).save_pretrained(tmp_path / "tiny-bert", safe_serialization=True)
    tokenizer.save_pretrained(tmp_path / "tiny-bert")
    registry = Registry([tmp_path / "none"], device="cpu")
    card = registry.add(tmp_path / "tiny-bert")
    assert (card.modality, card.method) == ("text", "external")
    engine = registry.engine(card.id)
    assert not engine.supports_cache
    result = engine.generate(TextRequest("Is 3 greater than 2?", steps=8, block_length=8, gen_length=16, seed=0))
    assert result.final and result.timings.nfe == 8 and "[MASK]" not in result.canvas
    with pytest.raises(InvalidRequest, match="no block-wise KV cache"):
        engine.generate(TextRequest("Is 3 greater than 2?", use_cache=True))
    with pytest.raises(CheckpointError, match="not available offline"):
        registry.add("some-org/some-masked-lm")


def test_bench_text_writes_results_summary_and_plots(text_models, tmp_path):
    from bench.text import main

    root, _, _ = text_models
    result = main(
        [
            "--device=cpu",
            f"--checkpoints={root / 'teacher-run'}",
            f"--checkpoints={root / 'student-run'}",
            "--models=tiny-text,tiny-text-cd4lm",
            "--prompts=8",
            "--latency-repeats=1",
            "--thresholds=0.9",
            "--step-divisors=1,4",
            f"--out={tmp_path}",
        ]
    )
    rows = result["rows"]
    decoders = {(r["model"], r["decoder"]) for r in rows}
    assert ("tiny-text", "fixed-48") in decoders and ("tiny-text", "fixed-12") in decoders
    assert ("tiny-text-cd4lm", "threshold-0.9+cache") in decoders and ("tiny-text", "threshold-0.9") in decoders
    assert ("tiny-text-cd4lm", "threshold-0.9+cache+eos") in decoders
    fixed = next(r for r in rows if r["decoder"] == "fixed-48")
    assert fixed["nfe"] == 48 and fixed["role"] == "teacher" and fixed["speedup_vs_teacher_default"] == 1.0
    assert {"teacher_accuracy", "student_accuracy", "speedup_at_matched_accuracy"} <= set(result["summary"])
    for name in ("text-cpu.json", "text-cpu.md", "text-cpu-accuracy-vs-nfe.png", "text-cpu-accuracy-vs-latency.png"):
        assert (tmp_path / name).stat().st_size > 0
    assert "threshold-0.9+cache" in (tmp_path / "text-cpu.md").read_text()


def _row(model, role, decoder, accuracy, ms, nfe, steps=None):
    return {
        "model": model,
        "role": role,
        "decoder": decoder,
        "quality": {"overall": accuracy},
        "latency_ms_p50": ms,
        "nfe": nfe,
        "threshold": None if steps else 0.9,
        "steps": steps or "adaptive@0.9",
        "gen_length": 48,
    }


def test_bench_text_summary_says_whether_the_student_is_clearly_ahead_of_training_free():
    from bench.text import summarise

    teacher = [_row("t", "teacher", "fixed-48", 0.94, 240.0, 48, steps=48), _row("t", "teacher", "thr", 0.935, 12.0, 2.2)]
    ahead = summarise(teacher + [_row("s", "student", "thr", 0.94, 9.0, 1.6), _row("s", "student", "bad", 0.5, 1.0, 1)], 0.01)
    assert ahead["student_matched_decoder"] == "s thr"  # the inaccurate faster row does not count
    assert ahead["student_nfe_at_matched_accuracy"] == 1.6 and ahead["training_free_nfe_at_matched_accuracy"] == 2.2
    assert ahead["student_vs_training_free_latency"] == pytest.approx(12 / 9)
    assert ahead["student_clearly_ahead_of_training_free"] is True
    level = summarise(teacher + [_row("s", "student", "thr", 0.94, 11.0, 1.6)], 0.01)
    assert level["student_clearly_ahead_of_training_free"] is False  # fewer calls, but not 20 % faster
    assert level["student_accuracy_gain_at_training_free_speed"] == pytest.approx(0.005)
    better = summarise(teacher + [_row("s", "student", "thr", 0.975, 11.9, 1.9)], 0.01)
    assert better["student_accuracy_gain_at_training_free_speed"] == pytest.approx(0.04)
    assert better["student_clearly_ahead_of_training_free"] is True  # same speed, 4 points more accurate
    slower = summarise(teacher + [_row("s", "student", "thr", 0.975, 12.5, 1.9)], 0.01)
    assert slower["student_accuracy_gain_at_training_free_speed"] is None  # no student row as fast
    assert slower["student_clearly_ahead_of_training_free"] is False


CONFIG_CODE = """
from transformers import PretrainedConfig


class TinyLLaDAConfig(PretrainedConfig):
    model_type = "tiny_llada"

    def __init__(self, vocab_size=300, hidden_size=32, max_position_embeddings=128, mask_token_id=None, **kwargs):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.max_position_embeddings = max_position_embeddings
        self.mask_token_id = mask_token_id
        super().__init__(**kwargs)
"""
MODEL_CODE = '''
import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_outputs import MaskedLMOutput

from .configuration_tiny_llada import TinyLLaDAConfig


class TinyLLaDAModel(PreTrainedModel):
    """LLaDA's layout in miniature: registered under AutoModel only, forward(input_ids) -> .logits."""

    config_class = TinyLLaDAConfig

    def __init__(self, config):
        super().__init__(config)
        self.embed = nn.Embedding(config.vocab_size, config.hidden_size)
        self.mix = nn.Linear(config.hidden_size, config.hidden_size)
        self.head = nn.Linear(config.hidden_size, config.vocab_size)
        self.post_init()

    def forward(self, input_ids, attention_mask=None, **kwargs):
        h = self.embed(input_ids)
        h = h + torch.tanh(self.mix(h.mean(dim=1, keepdim=True)))  # bidirectional: every token sees the whole canvas
        return MaskedLMOutput(logits=self.head(h))
'''


def test_a_remote_code_checkpoint_runs_only_when_trusted(tmp_path, monkeypatch):
    """A tiny LLaDA-style checkpoint that ships its own modelling code (config.json auto_map)."""
    import importlib.util
    import sys

    from trainer.text_tokenizer import train_tokenizer
    from trainer.worlds import textworld

    directory = tmp_path / "tiny-llada"
    directory.mkdir()
    (directory / "configuration_tiny_llada.py").write_text(CONFIG_CODE)
    (directory / "modeling_tiny_llada.py").write_text(MODEL_CODE)
    (directory / "__init__.py").write_text("")
    spec = importlib.util.spec_from_file_location(
        "tiny_llada_pkg", directory / "__init__.py", submodule_search_locations=[str(directory)]
    )
    package = importlib.util.module_from_spec(spec)
    sys.modules["tiny_llada_pkg"] = package
    modeling = importlib.import_module("tiny_llada_pkg.modeling_tiny_llada")
    tokenizer = train_tokenizer(textworld.corpus(500, seed=0), vocab_size=300)
    config = modeling.TinyLLaDAConfig(vocab_size=len(tokenizer), mask_token_id=tokenizer.mask_token_id)
    config.auto_map = {
        "AutoConfig": "configuration_tiny_llada.TinyLLaDAConfig",
        "AutoModel": "modeling_tiny_llada.TinyLLaDAModel",
    }
    torch.manual_seed(0)
    modeling.TinyLLaDAModel(config).save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    (directory / "__init__.py").unlink()

    registry = Registry([tmp_path / "none"], device="cpu")
    card = registry.add(directory)
    monkeypatch.delenv("DISTILLERY_TRUST_REMOTE_CODE", raising=False)
    with pytest.raises(CheckpointError, match="ships its own modelling code.*--trust-remote-code"):
        registry.engine(card.id)
    monkeypatch.setenv("DISTILLERY_TRUST_REMOTE_CODE", "1")
    engine = registry.engine(card.id)
    assert type(engine.model).__name__ == "TinyLLaDAModel" and not engine.supports_cache
    result = engine.generate(TextRequest("Is 3 greater than 2?", steps=8, block_length=8, gen_length=16, seed=0))
    assert result.final and result.timings.nfe == 8 and "[MASK]" not in result.canvas
