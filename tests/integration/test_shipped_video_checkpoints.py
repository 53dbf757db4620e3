"""The shipped video teacher: save_pretrained layout, small, loadable on CPU, streaming moving objects,
and a card that says how it was trained."""

import json
from pathlib import Path

import numpy as np
import pytest

from engines.registry import Registry
from engines.requests import VideoRequest
from tests.conftest import one_thread
from trainer.worlds import shapes

ROOT = Path(__file__).resolve().parents[2]
TEACHER = ROOT / "checkpoints" / "motion-teacher"


@pytest.fixture(scope="module")
def engine():
    return Registry([ROOT / "checkpoints"], device="cpu").engine("motion-teacher")


def test_video_checkpoint_layout_is_small_and_safetensors_only():
    files = {p.relative_to(TEACHER).as_posix() for p in TEACHER.rglob("*") if p.is_file()}
    assert {"card.json", "README.md", "transformer/config.json", "transformer/diffusion_pytorch_model.safetensors"} <= files
    assert "scheduler/scheduler_config.json" in files
    assert sum(p.stat().st_size for p in TEACHER.rglob("*") if p.is_file()) < 25 * 2**20
    assert not [f for f in files if f.endswith((".bin", ".pt", ".pth", ".ckpt", ".pkl"))]
    assert json.loads((TEACHER / "transformer" / "config.json").read_text())["_class_name"] == "VideoDiT"


def test_card_records_training_and_streams(engine):
    card = engine.card
    assert (card.modality, card.role, card.method, card.resolution) == ("video", "teacher", "video_fm", 64)
    assert card.data["world"] == "motion" and card.data["causal_fraction"] == 0.5 and card.train_gpu_seconds > 60
    assert "overall" in card.metrics["training_eval"]
    assert engine.streaming  # half of its training was chunk-causal: it streams (with CFG) as well as making clips


def test_the_teacher_streams_moving_objects_on_cpu(engine):
    """Frames arrive chunk by chunk, show objects on the world's background, and the objects move."""
    with one_thread():
        results = list(engine.stream(VideoRequest("a big red ball moving right quickly", seed=3, frames=8, steps=4)))
    assert [r.frame_index for r in results] == list(range(8)) and results[-1].final
    frames = np.stack([np.asarray(f) for f in results[-1].frames])  # (T, 64, 64, 3)
    background = np.array(shapes.BACKGROUND)
    foreground = np.abs(frames.astype(int) - background).sum(-1) > 60
    assert 0.002 < foreground.mean() < 0.5  # something is drawn, not noise and not an empty frame
    assert np.abs(frames[-1].astype(int) - frames[0].astype(int)).mean() > 0.1  # and it changes over time
