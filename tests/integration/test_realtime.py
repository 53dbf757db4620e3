"""engines/realtime.py on CPU: the real-time SD path equals diffusers' own pipeline for the same seeds,
caches prompt embeddings, decodes with a tiny autoencoder, and refuses what it cannot run.
(Compiled graphs are checked against eager on the GPU: tests/gpu/test_realtime_gpu.py.)"""

import copy

import numpy as np
import pytest
import torch

from bench.layouts import cached_caption_call, sana_sprint_pipeline, sd_turbo, tiny_autoencoder
from engines.errors import BackendUnavailable, InvalidRequest
from engines.realtime import PromptCache, RealtimeSD, compile_pipeline_networks

PROMPTS = ["a red ball", "two blue squares on the left"]


@pytest.fixture(scope="module")
def pipe():
    torch.manual_seed(0)
    return sd_turbo("tiny")


def diffusers_images(pipe, prompts, seeds, steps, guidance) -> np.ndarray:
    generators = [torch.Generator().manual_seed(s) for s in seeds]
    images = pipe(prompts, num_inference_steps=steps, guidance_scale=guidance, generator=generators, output_type="np").images
    return (images * 255).round().astype(np.uint8)


@pytest.mark.parametrize(("steps", "guidance"), [(1, 0.0), (2, 0.0), (4, 3.0)])
def test_eager_output_equals_the_diffusers_pipeline(pipe, steps, guidance):
    ours = RealtimeSD(pipe).generate(PROMPTS, [5, 9], steps, guidance).numpy()
    assert ours.shape == (2, 64, 64, 3) and ours.dtype == np.uint8
    np.testing.assert_array_equal(ours, diffusers_images(pipe, PROMPTS, [5, 9], steps, guidance))
    assert ours.std() > 1  # a real image, not a constant


def test_a_batch_image_reproduces_alone(pipe):
    realtime = RealtimeSD(pipe)
    batch = realtime.generate(PROMPTS, [11, 12], 2).numpy()
    alone = realtime.generate(PROMPTS[1:], [12], 2).numpy()
    np.testing.assert_allclose(batch[1].astype(int), alone[0].astype(int), atol=1)  # batched kernels may round apart
    assert np.abs(batch[0].astype(int) - batch[1].astype(int)).max() > 10


def test_prompt_embeddings_are_cached_and_reused(pipe):
    realtime = RealtimeSD(pipe, prompt_cache=2)
    first = realtime.generate([PROMPTS[0]], [1])
    again = realtime.generate([PROMPTS[0]], [1])
    np.testing.assert_array_equal(first.numpy(), again.numpy())
    assert (realtime.cache.hits, realtime.cache.misses) == (1, 1)
    realtime.generate(["three", "four"], [1, 2])  # evicts the first prompt: the cache is bounded
    assert len(realtime.cache) == 2
    realtime.generate([PROMPTS[0]], [1])
    assert realtime.cache.misses == 4
    # CFG needs the negative embeddings too: a separate entry
    realtime.generate([PROMPTS[0]], [1], steps=2, guidance=2.0)
    assert realtime.cache.misses == 5


def test_no_cache_stores_nothing_and_a_negative_size_is_refused(pipe):
    realtime = RealtimeSD(pipe, prompt_cache=0)
    realtime.generate([PROMPTS[0]], [1])
    realtime.generate([PROMPTS[0]], [1])
    assert len(realtime.cache) == 0 and realtime.cache.misses == 2
    with pytest.raises(ValueError, match="prompt cache size must be >= 0"):
        PromptCache(-1)


def test_the_tiny_autoencoder_decodes_at_the_same_size(pipe):
    torch.manual_seed(1)
    full = RealtimeSD(pipe).generate(PROMPTS, [3, 4])
    tiny = RealtimeSD(pipe, decoder=tiny_autoencoder("tiny")).generate(PROMPTS, [3, 4])
    assert tiny.shape == full.shape == (2, 64, 64, 3)
    assert not torch.equal(tiny, full)  # another decoder really ran


def test_bad_requests_and_unsupported_pipelines_are_refused(pipe):
    realtime = RealtimeSD(pipe)
    with pytest.raises(InvalidRequest, match="one seed per prompt"):
        realtime.generate(PROMPTS, [1])
    with pytest.raises(InvalidRequest, match="steps must be >= 1"):
        realtime.generate(PROMPTS[:1], [1], steps=0)
    with pytest.raises(BackendUnavailable, match="needs a CUDA GPU"):
        RealtimeSD(pipe, compile=True)
    with pytest.raises(BackendUnavailable, match="Stable Diffusion-class"):
        RealtimeSD(object())


def test_compile_pipeline_networks_needs_a_denoiser_and_a_vae(pipe):
    bare = copy.copy(pipe)
    object.__setattr__(bare, "vae", None)
    with pytest.raises(BackendUnavailable, match="no unet/transformer and vae"):
        compile_pipeline_networks(bare)


def test_sana_sprint_layout_runs_one_step_with_cached_caption_embeddings():
    torch.manual_seed(0)
    pipe = sana_sprint_pipeline("tiny", dtype=torch.float32)
    call = cached_caption_call(torch.randn(1, 300, 16), 128)
    images = pipe(generator=[torch.Generator().manual_seed(0)], **call).images
    assert images.shape == (1, 3, 128, 128)
    assert 0.0 <= float(images.min()) and float(images.max()) <= 1.0
    again = pipe(generator=[torch.Generator().manual_seed(0)], **call).images
    assert torch.equal(images, again)
