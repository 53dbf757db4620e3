"""The shipped image checkpoints (teacher and default student): they load on CPU, reproduce their
golden outputs, and their cards quote only numbers that a benchmark file holds."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engines.registry import Registry
from engines.requests import ImageRequest

ROOT = Path(__file__).resolve().parents[2]
PROMPT = "a red circle to the left of a blue square"
# id -> (steps, guidance, NFE) of its golden image
GOLDEN = {"shapes-teacher": (4, 1.5, 8), "shapes-dmd2": (1, 1.0, 1)}


@pytest.fixture(scope="module")
def registry():
    return Registry([ROOT / "checkpoints"], device="cpu")


def golden_path(model_id: str) -> Path:
    steps = GOLDEN[model_id][0]
    return ROOT / "tests" / "golden" / f"{model_id}-seed0-{steps}steps.png"


@pytest.mark.parametrize("model_id", GOLDEN)
def test_checkpoint_is_small_safetensors_in_save_pretrained_layout(model_id):
    path = ROOT / "checkpoints" / model_id
    files = {p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file()}
    assert {
        "card.json",
        "README.md",
        "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors",
        "scheduler/scheduler_config.json",
    } <= files
    assert sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) < 25 * 2**20
    assert not [f for f in files if f.endswith((".bin", ".pt", ".pth", ".ckpt", ".pkl"))]


@pytest.mark.parametrize("model_id", GOLDEN)
def test_generates_64px_images_matching_the_golden_output(registry, model_id):
    steps, guidance, nfe = GOLDEN[model_id]
    result = registry.engine(model_id).generate(ImageRequest(PROMPT, seed=0, steps=steps, guidance=guidance))
    image = np.asarray(result.images[0]).astype(int)
    golden = np.asarray(Image.open(golden_path(model_id)).convert("RGB")).astype(int)
    assert image.shape == golden.shape == (64, 64, 3)
    assert np.mean(np.abs(image - golden) <= 3) > 0.99  # CPU kernels may differ in the last bit
    assert result.timings.nfe == nfe


def test_the_default_engine_is_the_shipped_student_of_the_shipped_teacher(registry):
    default = registry.default("image")
    assert (default.id, default.role, default.method, default.default_steps) == ("shapes-dmd2", "student", "dmd2", 1)
    assert default.teacher == "shapes-teacher" and registry.card("shapes-teacher").role == "teacher"


@pytest.mark.parametrize("model_id", GOLDEN)
def test_card_metrics_come_from_benchmark_files(model_id):
    card = json.loads((ROOT / "checkpoints" / model_id / "card.json").read_text())
    quoted = {k: v for k, v in card["metrics"].items() if k.startswith("image-")}
    assert quoted, "the card quotes no benchmark"
    for key, values in quoted.items():
        suite_device, steps = key.split(" @ ")
        rows = json.loads((ROOT / "bench" / "results" / f"{suite_device}.json").read_text())["rows"]
        row = next(r for r in rows if r["model"] == model_id and f"{r['steps']} steps" == steps)
        assert values["overall"] == row["quality"]["overall"]
        assert values["latency_ms_p50"] == row["latency_ms_p50"]
        assert values["fd"] == row["fd"]
