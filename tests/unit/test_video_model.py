"""VideoDiT (engines/video_model.py): tiny random networks built here, CPU only.

A fresh VideoDiT is AdaLN-Zero (every block the identity, output 0), which would make most attention
properties hold trivially; `randomised` fills the zero-initialised weights so they are tested for real.
"""

import pytest
import torch

from engines.video_model import PRESETS, VideoDiT, VideoKVCache, build_video_network

TEXT_DIM = 384
RES = 16


def randomised(seed: int = 0, **overrides) -> VideoDiT:
    torch.manual_seed(seed)
    model = build_video_network("video-tiny", **overrides).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.abs().max() == 0:
                p.normal_(0.0, 0.2)
    return model


@pytest.fixture(scope="module")
def model() -> VideoDiT:
    return randomised()


def inputs(batch: int = 2, frames: int = 6, tokens: int = 5, pads: int = 2, seed: int = 0):
    """Clip, per-frame sigma, text states with `pads` zero padding tokens at the end of row 0, pooled, actions."""
    g = torch.Generator().manual_seed(seed)
    sample = torch.randn(batch, frames, 3, RES, RES, generator=g)
    sigma = torch.rand(batch, frames, generator=g)
    text = torch.randn(batch, tokens, TEXT_DIM, generator=g)
    text[0, tokens - pads :] = 0
    pooled = torch.randn(batch, TEXT_DIM, generator=g)
    actions = torch.randint(0, 5, (batch, frames), generator=g)
    return sample, sigma, text, pooled, actions


def stream(model: VideoDiT, sample, sigma, text, pooled, actions, cache: VideoKVCache, start: int = 0):
    """forward_chunk then commit_chunk (the clean frames), chunk by chunk; returns the velocities."""
    chunk, outs = model.config.chunk, []
    for f in range(0, sample.shape[1], chunk):
        part = slice(f, f + chunk)
        acts = None if actions is None else actions[:, part]
        outs.append(model.forward_chunk(sample[:, part], sigma[:, part], text, pooled, acts, cache, start + f))
        model.commit_chunk(sample[:, part], text, pooled, acts, cache, start + f)
    return torch.cat(outs, dim=1)


def test_presets_sizes_and_zero_init():
    small = build_video_network("video-s")
    params = sum(p.numel() for p in small.parameters())
    assert 8e6 <= params <= 12e6 and params * 2 < 25e6  # fp16 bytes
    assert small.tokens_per_frame == 64 and set(PRESETS) >= {"video-s", "video-tiny"}
    tiny = build_video_network("video-tiny")
    assert sum(p.numel() for p in tiny.parameters()) <= 100_000 and tiny.tokens_per_frame == 16
    sample, sigma, text, pooled, actions = inputs()
    with torch.no_grad():
        assert torch.equal(tiny(sample, sigma, text, pooled, actions), torch.zeros_like(sample))  # AdaLN-Zero
    with pytest.raises(ValueError, match="unknown video network preset"):
        build_video_network("video-xl")


@torch.no_grad()
def test_forward_shapes_and_partial_chunk(model):
    sample, sigma, text, pooled, actions = inputs(frames=5)  # chunk 2: last chunk has one frame
    for causal in (False, True):
        out = model(sample, sigma, text, pooled, actions, causal=causal)
        assert out.shape == sample.shape and out.dtype == sample.dtype and torch.isfinite(out).all()
    # actions=None means action 0 everywhere
    zeros = torch.zeros_like(actions)
    assert torch.allclose(model(sample, sigma, text, pooled, None), model(sample, sigma, text, pooled, zeros))


@torch.no_grad()
def test_streaming_equals_causal_forward(model):
    """Each chunk, streamed with an unbounded cache of the clean earlier chunks, equals the chunk-causal
    forward over the clip in which those earlier chunks are clean at sigma 0."""
    clean, sigma, text, pooled, actions = inputs(frames=7, seed=1)  # 3 full chunks + a partial one
    noisy = torch.randn_like(clean)
    cache = model.new_cache(2, window=7)
    for f in range(0, 7, model.config.chunk):
        part = slice(f, f + model.config.chunk)
        clip, sig = clean.clone(), torch.zeros_like(sigma)
        clip[:, part], sig[:, part] = noisy[:, part], sigma[:, part]
        full = model(clip, sig, text, pooled, actions, causal=True)[:, part]
        chunk = model.forward_chunk(noisy[:, part], sigma[:, part], text, pooled, actions[:, part], cache, f)
        assert (chunk - full).abs().max() < 1e-4
        model.commit_chunk(clean[:, part], text, pooled, actions[:, part], cache, f)
    assert cache.num_frames == 7 and cache.evicted == 0 and cache.frames == list(range(7))


@torch.no_grad()
def test_forward_chunk_leaves_cache_alone_and_frame_index_must_continue(model):
    sample, sigma, text, pooled, actions = inputs(frames=4)
    cache = model.new_cache(2)
    model.commit_chunk(sample[:, :2], text, pooled, actions[:, :2], cache, 0)
    keys = [k.clone() for k in cache.keys]
    first = model.forward_chunk(sample[:, 2:], sigma[:, 2:], text, pooled, actions[:, 2:], cache, 2)
    second = model.forward_chunk(sample[:, 2:], sigma[:, 2:], text, pooled, actions[:, 2:], cache, 2)
    assert torch.equal(first, second) and cache.frames == [0, 1]
    assert all(torch.equal(a, b) for a, b in zip(keys, cache.keys))
    copy = cache.detach()
    assert copy.frames == cache.frames and copy.frames is not cache.frames
    assert all(torch.equal(a, b) and not a.requires_grad for a, b in zip(copy.values, cache.values))
    with pytest.raises(ValueError, match="pass frame_index=2"):
        model.forward_chunk(sample[:, 2:], sigma[:, 2:], text, pooled, actions[:, 2:], cache, 3)


@torch.no_grad()
def test_eviction_keeps_memory_bounded(model):
    sample, sigma, text, pooled, actions = inputs(batch=1, frames=2, seed=2)
    cache, n = model.new_cache(1), model.tokens_per_frame
    window, sink = model.config.window, model.config.sink
    for f in range(0, 40, 2):
        model.forward_chunk(sample, sigma, text, pooled, actions, cache, f)
        model.commit_chunk(sample, text, pooled, actions, cache, f)
        assert cache.num_frames <= window and cache.frames == list(range(max(0, f + 2 - window), f + 2))
        assert all(k.shape[2] == cache.num_frames * n for k in cache.keys + cache.values)
        assert all(k.shape[2] <= sink * n for k in cache.sink_keys + cache.sink_values)
        assert cache.num_tokens <= (window + sink) * n
    assert cache.evicted == 40 - window and cache.sink_frames == sink

    no_sink = randomised(sink=0)
    cache = no_sink.new_cache(1)
    for f in range(0, 12, 2):
        no_sink.commit_chunk(sample, text, pooled, actions, cache, f)
    assert cache.num_frames == window and cache.sink_keys == [] and cache.num_tokens == window * n


@torch.no_grad()
def test_sink_is_the_ema_of_evicted_frames(model):
    """Window 2, chunk 2: frames 0-3 are evicted in order, so sink = .729 f0 + .081 f1 + .09 f2 + .1 f3."""
    sample, sigma, text, pooled, actions = inputs(batch=1, frames=6, seed=3)
    cache, n = model.new_cache(1, window=2), model.tokens_per_frame
    frames_kv = []  # per committed frame: per layer (keys, values) as they entered the cache
    for f in range(0, 6, 2):
        model.commit_chunk(sample[:, f : f + 2], text, pooled, actions[:, f : f + 2], cache, f)
        for i in range(2):
            frames_kv.append(
                [(k[:, :, i * n : (i + 1) * n], v[:, :, i * n : (i + 1) * n]) for k, v in zip(cache.keys, cache.values)]
            )
        if f == 2:  # after the first eviction (frames 0 and 1): .9 f0 + .1 f1
            for layer in range(len(model.blocks)):
                expected = 0.9 * frames_kv[0][layer][0] + 0.1 * frames_kv[1][layer][0]
                assert torch.allclose(cache.sink_keys[layer], expected, atol=1e-6)
    weights = (0.729, 0.081, 0.09, 0.1)
    for layer in range(len(model.blocks)):
        for which, sink in ((0, cache.sink_keys), (1, cache.sink_values)):
            expected = sum(w * frames_kv[i][layer][which] for i, w in enumerate(weights))
            assert sink[layer].shape == (1, 2, n, 16) and torch.allclose(sink[layer], expected, atol=1e-6)
    assert cache.evicted == 4 and cache.frames == [4, 5]


@torch.no_grad()
def test_positions_are_relative(model):
    """The same stream (with evictions and the sink) started at frame 10 000 gives the same outputs."""
    sample, sigma, text, pooled, actions = inputs(batch=1, frames=10, seed=4)
    early = stream(model, sample, sigma, text, pooled, actions, model.new_cache(1))
    late_cache = model.new_cache(1)
    late = stream(model, sample, sigma, text, pooled, actions, late_cache, start=10_000)
    assert late_cache.evicted == 6 and late_cache.frames == [10_006, 10_007, 10_008, 10_009]
    assert (early - late).abs().max() < 1e-5


@torch.no_grad()
def test_bidirectional_sees_the_future_causal_does_not(model):
    sample, sigma, text, pooled, actions = inputs(frames=6, seed=5)
    later = sample.clone()
    later[:, 2:] += torch.randn_like(later[:, 2:])  # change chunks 1 and 2 only
    bi = model(sample, sigma, text, pooled, actions)[:, 0]
    assert (bi - model(later, sigma, text, pooled, actions)[:, 0]).abs().max() > 1e-3
    causal = model(sample, sigma, text, pooled, actions, causal=True)[:, :2]
    assert torch.equal(causal, model(later, sigma, text, pooled, actions, causal=True)[:, :2])
    inside = sample.clone()
    inside[:, 1] += 1.0  # same chunk as frame 0: visible even when causal
    assert (causal[:, 0] - model(inside, sigma, text, pooled, actions, causal=True)[:, 0]).abs().max() > 1e-3


@torch.no_grad()
def test_text_padding_is_masked_and_empty_prompt_is_finite(model):
    sample, sigma, text, pooled, actions = inputs(frames=2)
    out = model(sample, sigma, text, pooled, actions)
    padded = torch.cat([text, torch.zeros(2, 7, TEXT_DIM)], dim=1)
    assert (out - model(sample, sigma, padded, pooled, actions)).abs().max() < 1e-5
    empty = model(sample, sigma, torch.zeros(2, 5, TEXT_DIM), pooled, actions)
    assert torch.isfinite(empty).all() and (empty - out).abs().max() > 1e-4
    # an empty prompt contributes nothing, whatever its length
    assert (empty - model(sample, sigma, torch.zeros(2, 1, TEXT_DIM), pooled, actions)).abs().max() < 1e-5


def test_save_and_load_round_trip(model, tmp_path):
    model.save_pretrained(tmp_path / "transformer")
    assert (tmp_path / "transformer" / "diffusion_pytorch_model.safetensors").exists()
    loaded = VideoDiT.from_pretrained(tmp_path / "transformer").eval()
    public = lambda config: {k: v for k, v in config.items() if not k.startswith("_")}
    assert public(loaded.config) == public(model.config)
    sample, sigma, text, pooled, actions = inputs(frames=3)
    with torch.no_grad():
        assert torch.equal(
            model(sample, sigma, text, pooled, actions, causal=True), loaded(sample, sigma, text, pooled, actions, causal=True)
        )


def test_gradients_and_checkpointing():
    sample, sigma, text, pooled, actions = inputs(frames=4)
    grads = []
    for checkpointing in (False, True):
        net = randomised(seed=6).train()
        if checkpointing:
            net.enable_gradient_checkpointing()
        net(sample, sigma, text, pooled, actions, causal=True).square().mean().backward()
        assert all(p.grad is not None for p in net.parameters())
        grads.append(torch.cat([p.grad.flatten() for p in net.parameters()]))
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


@torch.no_grad()
def test_compiled_streaming_matches_eager_and_copies_use_their_own_weights():
    """compile_streaming, traced by dynamo with its eager backend (inductor's compile time is GPU-test
    territory); one layer, a 2-frame window and two chunks keep the tracing to four graphs."""
    import copy

    sample, sigma, text, pooled, actions = inputs(batch=1, frames=4, seed=7)
    eager = randomised(seed=7, layers=1)
    compiled = copy.deepcopy(eager)
    compiled.compile_streaming(backend="eager")
    expected = stream(eager, sample, sigma, text, pooled, actions, eager.new_cache(1, window=2))
    cache = compiled.new_cache(1, window=2)
    assert torch.allclose(stream(compiled, sample, sigma, text, pooled, actions, cache, start=500), expected, atol=1e-5)
    assert cache.evicted == 2 and cache.sink_frames == 1 and cache.frames == [502, 503]
    other = copy.deepcopy(compiled)  # shares the compiled graphs, not the weights
    for p in other.parameters():
        p.add_(0.1)
    assert (stream(other, sample, sigma, text, pooled, actions, other.new_cache(1, window=2)) - expected).abs().max() > 1e-3


def test_clear_errors_for_bad_inputs(model):
    sample, sigma, text, pooled, actions = inputs(frames=2)
    with pytest.raises(ValueError, match=r"sample must be \(batch, frames, 3, 16, 16\)"):
        model(torch.zeros(2, 2, 3, 32, 32), sigma, text, pooled)
    with pytest.raises(ValueError, match="sigma must be"):
        model(sample, sigma[:, :1], text, pooled)
    with pytest.raises(ValueError, match=r"actions must be ids in \[0, 5\)"):
        model(sample, sigma, text, pooled, actions + 5)
    with pytest.raises(ValueError, match="encoder_hidden_states must be"):
        model(sample, sigma, text[..., :100], pooled)
    with pytest.raises(ValueError, match="pooled must be"):
        model(sample, sigma, text, pooled[:1])
    cache = model.new_cache(2)
    big = torch.zeros(2, 5, 3, RES, RES)
    with pytest.raises(ValueError, match="larger than the cache window"):
        model.forward_chunk(big, torch.zeros(2, 5), text, pooled, None, cache, 0)
    with pytest.raises(ValueError, match="larger than window"):
        VideoDiT(chunk=16, window=12)
    with pytest.raises(ValueError, match="multiple of patch"):
        VideoDiT(resolution=60)
    with pytest.raises(ValueError, match="batch 1 does not match"):
        model.commit_chunk(sample[:1], text[:1], pooled[:1], None, cache, 0)


def test_forward_with_a_cache_is_forward_chunk(model):
    """The DDP-visible entry point (forward(..., cache=)) gives forward_chunk's velocities and leaves the cache alone."""
    sample, sigma, text, pooled, actions = inputs(frames=2, seed=5)
    cache = model.new_cache(2)
    model.commit_chunk(sample, text, pooled, actions, cache, 0)
    x = torch.randn_like(sample)
    a = model(x, sigma, text, pooled, actions, cache=cache, frame_index=2)
    b = model.forward_chunk(x, sigma, text, pooled, actions, cache, 2)
    assert torch.equal(a, b) and cache.num_frames == 2


@torch.no_grad()
def test_stream_hands_a_chunk_out_before_committing_it(model, monkeypatch):
    """The first frame does not wait for the cache commit: a chunk is committed when the next is asked
    for, and a finite stream's last chunk never is."""
    from engines.text_encoder import TextEmbedding
    from engines.video_sampling import stream_chunks
    from trainer.image_task import new_scheduler

    g = torch.Generator().manual_seed(3)
    states, pooled = torch.randn(1, 5, TEXT_DIM, generator=g), torch.randn(1, TEXT_DIM, generator=g)
    emb = TextEmbedding(states, pooled, torch.ones(1, 5, dtype=torch.bool))
    commits = []
    real_commit = model.commit_chunk
    monkeypatch.setattr(model, "commit_chunk", lambda *a, **k: (commits.append(a[-1]), real_commit(*a, **k))[1])
    scheduler = new_scheduler(3.0, stochastic=True)
    chunks = stream_chunks(model, scheduler, [7], 2, lambda _f: emb, None, 3 * model.config.chunk)
    first = next(chunks)
    assert first.start == 0 and commits == [] and first.nfe == 2  # two denoising steps, no commit yet
    second = next(chunks)
    assert commits == [0] and second.nfe == 1 + 2  # the first chunk's commit, then its own two steps
    rest = list(chunks)
    assert len(rest) == 1 and commits == [0, model.config.chunk]  # the last chunk is never committed
    # the deferred commit still reaches the next chunk: without it, the second chunk comes out otherwise
    monkeypatch.setattr(model, "commit_chunk", lambda *a, **k: None)
    blind = list(stream_chunks(model, scheduler, [7], 2, lambda _f: emb, None, 3 * model.config.chunk))
    assert torch.equal(blind[0].frames, first.frames) and not torch.allclose(blind[1].frames, second.frames)


def test_action_ids_are_checked_once_per_chunk_by_the_streaming_sampler(model):
    """forward_chunk reads the ids (a host sync on a GPU) unless told they were checked; stream_chunks checks
    each chunk's ids once, before any network call, so bad ids still fail with the model's message."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    from engines.text_encoder import TextEmbedding
    from engines.video_sampling import stream_chunks

    sample, sigma, text, pooled, actions = inputs(batch=1, frames=2)
    cache = model.new_cache(1)
    with pytest.raises(ValueError, match=r"actions must be ids in \[0, 5\)"):
        model.forward_chunk(sample, sigma, text, pooled, actions + 5, cache, 0)
    with pytest.raises(ValueError, match="integer action ids"):
        model.check_action_ids(actions.float())
    # told they were checked, the call does not read them (the range check is the caller's)
    out = model.forward_chunk(sample, sigma, text, pooled, actions, cache, 0, action_ids_checked=True)
    assert torch.equal(out, model.forward_chunk(sample, sigma, text, pooled, actions, cache, 0))
    emb = TextEmbedding(text, pooled, torch.ones(text.shape[:2], dtype=torch.bool))
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    calls = []

    def bad_actions(first: int, count: int) -> torch.Tensor:
        calls.append(first)
        return torch.full((1, count), 9)

    chunks = stream_chunks(model, scheduler, [0], 2, lambda _f: emb, bad_actions, frames=4)
    with pytest.raises(ValueError, match=r"actions must be ids in \[0, 5\)"):
        next(chunks)
    assert calls == [0]
