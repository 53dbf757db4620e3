"""Serving backends on the GPU: `compiled` (and `onnx` with the CUDA EP, where onnxruntime-gpu is
installed) against eager torch for the same seed, on the shipped 1-step student.
Run on the lent machine: `python -m pytest -m gpu tests/gpu/test_backends_gpu.py -s`."""

import importlib.util
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from engines.devices import synchronize
from engines.registry import Registry
from engines.requests import ImageRequest

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (-m gpu on the lent GPU)"),
]

SHIPPED = Path(__file__).resolve().parents[2] / "checkpoints"
MODEL = "shapes-dmd2"
PROMPTS = ["a red circle to the left of a blue square", "three yellow triangles", "a large white cross", "a purple diamond"]


def latency_ms(engine, runs: int = 20) -> float:
    request = ImageRequest(PROMPTS[0], seed=0, steps=1)
    engine.generate(request)  # warm (text-encoder cache, allocator)
    times = []
    for _ in range(runs):
        synchronize(engine.device)
        start = time.perf_counter()
        engine.generate(request)
        synchronize(engine.device)
        times.append((time.perf_counter() - start) * 1000)
    return float(np.median(times))


def fp32_reference(engine, steps: int) -> torch.Tensor:
    """The same samples from a float32 copy of the engine's network: the yardstick for every fp16 path."""
    from engines import denoisers
    from engines.image import sample_prompts

    network = denoisers.load_denoiser(Path(engine.card.path), dtype=torch.float32).to(engine.device).eval()
    with torch.no_grad():
        return sample_prompts(
            network,
            engine.text_encoder,
            PROMPTS,
            list(range(len(PROMPTS))),
            steps,
            engine.card.default_guidance,
            engine.device,
            engine.scheduler,
        ).float()


def within_fp16_noise(candidate: torch.Tensor, eager: torch.Tensor, reference: torch.Tensor) -> tuple[float, float]:
    """(candidate's error, eager fp16's error), both against the fp32 reference."""
    return (candidate.float() - reference).abs().max().item(), (eager.float() - reference).abs().max().item()


def pixels(result):
    return np.stack([np.asarray(im) for im in result.images]).astype(int)


def test_compiled_matches_eager_on_cuda():
    registry = Registry([SHIPPED], device="cuda", cache_size=2)
    eager = registry.engine(MODEL)
    start = time.perf_counter()
    compiled = registry.engine(MODEL, backend="compiled")
    print(f"\ncompiled load + warm-up: {time.perf_counter() - start:.1f} s")
    seeds = list(range(len(PROMPTS)))
    for steps in (1, 4):
        a = eager.sample_prompts(PROMPTS, seeds, steps=steps)
        b = compiled.sample_prompts(PROMPTS, seeds, steps=steps)
        error, fp16_error = within_fp16_noise(b, a, fp32_reference(eager, steps))
        print(f"{steps} step(s) vs fp32: compiled {error:.2e}, eager fp16 {fp16_error:.2e}")
        # Both run in fp16: compiled may reorder fp16 arithmetic, but must be no less accurate than eager fp16
        # itself (a sharp one-step student amplifies fp16 rounding far beyond the export's 1e-2 + 1e-2 * |x|).
        assert error <= 1.5 * fp16_error + 1e-2
    result = compiled.generate(ImageRequest(PROMPTS[1], seed=5, batch=2))
    assert result.backend == "compiled"
    assert np.abs(pixels(result) - pixels(eager.generate(ImageRequest(PROMPTS[1], seed=5, batch=2)))).max() <= 3
    print(f"latency batch 1, 1 step: torch {latency_ms(eager):.2f} ms, compiled {latency_ms(compiled):.2f} ms")


@pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None, reason="onnxruntime not installed on this machine")
def test_onnx_cuda_matches_eager(tmp_path):
    import onnxruntime as ort

    from trainer.__main__ import main as trainer_main

    root = tmp_path / "ck"
    shutil.copytree(SHIPPED / MODEL, root / MODEL, ignore=shutil.ignore_patterns("onnx"))
    assert trainer_main(["export", str(root / MODEL), "--to", "onnx"]) == 0
    registry = Registry([root], device="cuda", cache_size=2)
    eager, onnx = registry.engine(MODEL), registry.engine(MODEL, backend="onnx")
    print(f"\nonnxruntime providers: {onnx.denoiser.session.get_providers()} (available: {ort.get_available_providers()})")
    seeds = list(range(len(PROMPTS)))
    reference = fp32_reference(eager, 1)
    error = (onnx.sample_prompts(PROMPTS, seeds, steps=1).float() - reference).abs().max().item()
    print(f"onnx (fp32 graph) vs eager fp32: max abs {error:.2e}")
    assert error < 2e-2  # fp32 against fp32: the fp32 export tolerance, with room for TF32 kernels
    print(f"latency batch 1, 1 step: torch {latency_ms(eager):.2f} ms, onnx {latency_ms(onnx):.2f} ms")
