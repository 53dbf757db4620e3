"""The video engine on the GPU: the `compiled` backend (CUDA graphs over the per-chunk computation)
against eager torch for the same seed, and its batch-1 streaming rate, on the shipped video model.
Run on the lent machine: `python -m pytest -m gpu tests/gpu/test_video_gpu.py -s`."""

import time
from pathlib import Path

import numpy as np
import pytest
import torch

from engines.base import collect
from engines.devices import synchronize
from engines.registry import Registry
from engines.requests import VideoRequest

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (-m gpu on the lent GPU)"),
]

SHIPPED = Path(__file__).resolve().parents[2] / "checkpoints"
REQUEST = VideoRequest("a red ball bouncing to the right and a blue square sliding up", seed=4, frames=16, steps=2)


def frames(engine) -> np.ndarray:
    result = collect(engine.stream(REQUEST))  # frames only: the MP4 writer is not what this compares
    return np.stack([np.asarray(f, dtype=np.float32) for f in result.frames])


def stream_fps(engine, frames_: int = 64) -> float:
    request = VideoRequest(REQUEST.prompt, seed=1, frames=frames_, steps=REQUEST.steps)
    list(engine.stream(request))  # warm
    synchronize(engine.device)
    start = time.perf_counter()
    count = sum(1 for _ in engine.stream(request))
    synchronize(engine.device)
    return count / (time.perf_counter() - start)


def test_compiled_streaming_matches_eager_and_is_faster():
    registry = Registry([SHIPPED], device="cuda", cache_size=2)
    model = next(c.id for c in registry.cards("video") if registry.engine(c.id).streaming)
    eager, compiled = registry.engine(model, "torch"), registry.engine(model, "compiled")
    a, b = frames(eager), frames(compiled)
    # eager serves fp16, compiled fp32 with TF32 matmuls: frames agree to a few grey levels, not bit for bit
    assert np.abs(a - b).mean() < 6.0, np.abs(a - b).mean()
    fps_eager, fps_compiled = stream_fps(eager), stream_fps(compiled)
    print(f"{model}: eager {fps_eager:.0f} frames/s, compiled {fps_compiled:.0f} frames/s (batch 1, {REQUEST.steps} steps)")
    assert fps_compiled > fps_eager
