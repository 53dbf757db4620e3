"""The shipped text checkpoints (masked-diffusion teacher and its CD4LM student): save_pretrained
layout, small, loadable on CPU, solving held-out problems, and cards quoting only benchmark numbers."""

import json
from pathlib import Path

import pytest

from engines.registry import Registry
from engines.requests import TextRequest
from trainer.worlds import textworld

ROOT = Path(__file__).resolve().parents[2]
MODELS = ("text-teacher", "text-cd4lm")


@pytest.fixture(scope="module")
def registry():
    return Registry([ROOT / "checkpoints"], device="cpu")


@pytest.mark.parametrize("model_id", MODELS)
def test_text_checkpoint_layout_is_small_and_safetensors_only(model_id):
    path = ROOT / "checkpoints" / model_id
    files = {p.name for p in path.iterdir() if p.is_file()}
    assert {"card.json", "README.md", "config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= files
    assert sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) < 25 * 2**20
    assert not [f for f in files if f.endswith((".bin", ".pt", ".pth", ".ckpt", ".pkl"))]
    config = json.loads((path / "config.json").read_text())
    assert config["model_type"] == "distillery_mdlm"


def test_the_student_is_the_default_text_model_and_names_its_teacher(registry):
    default = registry.default("text")
    assert (default.id, default.role, default.method, default.teacher) == ("text-cd4lm", "student", "cd4lm", "text-teacher")
    assert default.decoding["threshold"] == 0.97 and default.decoding["use_cache"] and default.decoding["eos_fill"]


def test_the_student_solves_held_out_problems_in_a_few_calls(registry):
    engine = registry.engine("text-cd4lm")
    examples = [e for e in textworld.eval_examples(16) if e.family in ("reversal", "sorting", "arithmetic")][:6]
    results = [engine.generate(TextRequest(e.prompt, seed=0)) for e in examples]
    scores = textworld.judge([r.text for r in results], examples)
    assert scores["overall"] >= 0.8, [r.text for r in results]
    assert all(r.timings.nfe <= 6 for r in results)  # 3 blocks of 16: confident spans commit together
    assert all("[MASK]" not in r.canvas for r in results)


@pytest.mark.parametrize("model_id", MODELS)
def test_text_card_metrics_come_from_the_benchmark_file(model_id):
    card = json.loads((ROOT / "checkpoints" / model_id / "card.json").read_text())
    quoted = {k: v for k, v in card["metrics"].items() if k.startswith("text-")}
    assert quoted, "the card quotes no benchmark"
    for key, values in quoted.items():
        stem, decoder = key.split(" @ ")
        rows = json.loads((ROOT / "bench" / "results" / f"{stem}.json").read_text())["rows"]
        row = next(r for r in rows if r["model"] == model_id and r["decoder"] == decoder)
        assert values["overall"] == row["quality"]["overall"]
        assert values["latency_ms_p50"] == row["latency_ms_p50"] and values["nfe"] == row["nfe"]
