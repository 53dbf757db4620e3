"""The compiled real-time paths on the GPU against eager, for the same seeds (tiny layouts: the
graphs and the kernels are the same code as at real scale; bench/serving.py times the real sizes).
Run on the lent machine: `python -m pytest -m gpu tests/gpu/test_realtime_gpu.py -s`."""

import numpy as np
import pytest
import torch

from bench.layouts import cached_caption_call, sana_sprint_pipeline, sd_turbo, tiny_autoencoder
from engines.graphs import on_graph_thread
from engines.realtime import RealtimeSD, compile_pipeline_networks

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (-m gpu on the lent GPU)"),
]

PROMPTS = ["a red ball", "two blue squares on the left"]


def max_diff(a: torch.Tensor, b: torch.Tensor) -> int:
    return int((a.int() - b.int()).abs().max())


@pytest.mark.parametrize("tiny_decoder", [False, True])
def test_compiled_realtime_matches_eager(tiny_decoder):
    pipes = []
    for _ in range(2):  # the same weights twice: compiling fuses the UNet's projections in place, eager stays unfused
        torch.manual_seed(0)
        pipes.append(sd_turbo("tiny", dtype=torch.float16).to("cuda"))
    pipe = pipes[1]
    decoder = tiny_autoencoder("tiny", dtype=torch.float16).to("cuda") if tiny_decoder else None
    eager = RealtimeSD(pipes[0], decoder=decoder)
    fast = RealtimeSD(pipe, decoder=decoder, compile=True)
    fast.warm_up(batch=2)
    for steps in (1, 2):
        want = eager.generate(PROMPTS, [3, 4], steps)
        got = fast.generate(PROMPTS, [3, 4], steps)
        print(f"tiny decoder {tiny_decoder}, {steps} steps: max |compiled - eager| = {max_diff(got, want)} / 255")
        assert got.shape == want.shape == (2, 64, 64, 3)
        assert max_diff(got, want) <= 4  # fp16 kernels fused differently; a wrong graph is off by far more
    # the caller's pipeline is untouched: its text encoder is still the eager module
    assert not hasattr(pipe.text_encoder, "_orig_mod")


def test_compiled_sana_sprint_pipeline_matches_eager():
    torch.manual_seed(0)
    pipe = sana_sprint_pipeline("tiny", dtype=torch.bfloat16).to("cuda")
    call = cached_caption_call(torch.randn(1, 300, 16, device="cuda", dtype=torch.bfloat16), 128)
    want = pipe(generator=[torch.Generator().manual_seed(0)], **call).images.float().cpu()
    compile_pipeline_networks(pipe)
    for _ in range(3):  # compile, record, replay: on the process's CUDA-graph thread, as every graphed call
        got = on_graph_thread(lambda: pipe(generator=[torch.Generator().manual_seed(0)], **call).images.float().cpu())
    diff = float((got - want).abs().max())
    print(f"SANA-Sprint tiny: max |compiled - eager| = {diff:.4f}")
    assert got.shape == want.shape and np.isfinite(diff) and diff <= 0.05
