"""The pipeline engine's `compiled` backend (for SD-class pipelines: engines/realtime.py with CUDA graphs on
the engine's one worker thread) on the GPU against its `torch` backend, for the same seeds, on a tiny random
SD-Turbo-layout pipeline saved and loaded the way a user's download would be.
Run on the lent machine: `python -m pytest -m gpu tests/gpu/test_pipelines_gpu.py -s`."""

import numpy as np
import pytest
import torch

from bench.layouts import sd_turbo
from engines.registry import Registry
from engines.requests import ImageRequest

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (-m gpu on the lent GPU)"),
]


def test_compiled_pipeline_backend_matches_torch(tmp_path):
    torch.manual_seed(0)
    sd_turbo("tiny").save_pretrained(tmp_path / "tiny-sd-turbo", safe_serialization=True)
    registry = Registry([], device="cuda", cache_size=2)
    card = registry.add(tmp_path / "tiny-sd-turbo")
    request = ImageRequest(prompt="a red ball left of a blue square", seed=3, steps=2, batch=2)
    want = registry.engine(card.id, "torch").generate(request)
    compiled = registry.engine(card.id, "compiled")  # SD-class: engines/realtime.py, CUDA graphs on the engine's worker
    assert compiled._realtime is not None and compiled._realtime.compiled
    for _ in range(2):  # a new batch size records its graphs on the first call
        states = list(compiled.stream(request))
    got = states[-1]
    assert [s.final for s in states] == [False, True] and got.backend == "compiled" and len(got.images) == 2
    diff = max(int(np.abs(np.asarray(a, dtype=int) - np.asarray(b, dtype=int)).max()) for a, b in zip(got.images, want.images))
    print(f"pipeline engine: max |compiled - torch| = {diff} / 255")
    assert diff <= 4  # fp16 kernels fused differently; a wrong graph is off by far more
