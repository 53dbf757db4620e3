"""The shipped teacher checkpoint: loads on CPU, reproduces its golden output, and its card quotes
only numbers that a benchmark file holds."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engines.registry import Registry
from engines.requests import ImageRequest

ROOT = Path(__file__).resolve().parents[2]
TEACHER = ROOT / "checkpoints" / "shapes-teacher"


@pytest.fixture(scope="module")
def engine():
    return Registry([ROOT / "checkpoints"], device="cpu").engine("shapes-teacher")


def test_checkpoint_is_small_safetensors_in_save_pretrained_layout():
    files = {p.relative_to(TEACHER).as_posix() for p in TEACHER.rglob("*") if p.is_file()}
    assert {
        "card.json",
        "README.md",
        "transformer/config.json",
        "transformer/diffusion_pytorch_model.safetensors",
        "scheduler/scheduler_config.json",
    } <= files
    assert sum(p.stat().st_size for p in TEACHER.rglob("*") if p.is_file()) < 25 * 2**20
    assert not [f for f in files if f.endswith((".bin", ".pt", ".pth", ".ckpt", ".pkl"))]


def test_generates_64px_images_matching_the_golden_output(engine):
    result = engine.generate(ImageRequest("a red circle to the left of a blue square", seed=0, steps=4, guidance=4.5))
    image = np.asarray(result.images[0]).astype(int)
    golden = np.asarray(Image.open(ROOT / "tests" / "golden" / "shapes-teacher-seed0-4steps.png").convert("RGB")).astype(int)
    assert image.shape == golden.shape == (64, 64, 3)
    assert np.mean(np.abs(image - golden) <= 3) > 0.99  # CPU kernels may differ in the last bit
    assert result.timings.nfe == 8


def test_card_metrics_come_from_benchmark_files():
    card = json.loads((TEACHER / "card.json").read_text())
    quoted = {k: v for k, v in card["metrics"].items() if k.startswith("image-")}
    assert quoted, "the card quotes no benchmark"
    for key, values in quoted.items():
        suite_device, steps = key.split(" @ ")
        rows = json.loads((ROOT / "bench" / "results" / f"{suite_device}.json").read_text())["rows"]
        row = next(r for r in rows if r["model"] == "shapes-teacher" and f"{r['steps']} steps" == steps)
        assert values["overall"] == row["quality"]["overall"]
        assert values["latency_ms_p50"] == row["latency_ms_p50"]
