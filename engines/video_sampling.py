"""Sampling video with the shared flow-matching sampler (engines/samplers.py).

Two ways, one sampler:
- `sample_clips`: denoise whole clips at once (the bidirectional teacher; also the causal student
  run as one clip with its chunk-causal mask), with classifier-free guidance.
- `stream_chunks`: the causal student's streaming rollout. Each chunk of frames is denoised from
  its own noise while attending to the KV cache of the frames already made, then committed to the
  cache; the caller gets every chunk as soon as it is done, and can change the text or the actions
  between chunks (the scene follows the new prompt, the player follows the arrow keys).

Noise is drawn on the CPU from one generator per clip, seeded by the clip's seed: a clip reproduces
alone and on every device, and stream and whole-clip sampling of the same seed start alike.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from engines.samplers import flow_match_sample
from engines.text_encoder import TextEmbedding


def clip_noise(seeds: list[int], frames: int, frame_shape: tuple[int, ...], device) -> tuple[torch.Tensor, list[torch.Generator]]:
    """(B, frames, C, H, W) standard noise; clip i from a CPU generator seeded by seeds[i]. The
    generators are returned so later chunks (and stochastic samplers' re-noising) keep drawing from them."""
    generators = [torch.Generator().manual_seed(int(seed)) for seed in seeds]
    noise = torch.stack([torch.randn((frames, *frame_shape), generator=g) for g in generators])
    return noise.to(device), generators


def _frame_shape(model) -> tuple[int, int, int]:
    config = model.config
    return (int(config.in_channels), int(config.resolution), int(config.resolution))


def clip_velocity(model, actions: torch.Tensor | None, causal: bool):
    """A VelocityFn over whole clips: the sampler's timestep t (B,) = 1000 sigma, one sigma per clip.
    Under CFG the sampler doubles the batch, so the actions are tiled to match."""

    def velocity(x: torch.Tensor, t: torch.Tensor, emb: TextEmbedding) -> torch.Tensor:
        b, frames = x.shape[:2]
        dtype = next(model.parameters()).dtype
        sigma = (t.float() / 1000).view(b, 1).expand(b, frames)
        acts = None if actions is None else actions.repeat(b // actions.shape[0], 1)
        out = model(x.to(dtype), sigma.to(dtype), emb.states.to(dtype), emb.pooled.to(dtype), acts, causal=causal)
        return out.to(x.dtype)

    return velocity


@torch.no_grad()
def sample_clips(
    model,
    scheduler,
    cond: TextEmbedding,
    null: TextEmbedding,
    seeds: list[int],
    frames: int,
    steps: int,
    guidance: float,
    actions: torch.Tensor | None = None,
    causal: bool = False,
) -> torch.Tensor:
    """Finished clips (B, frames, C, H, W) in [-1, 1]. `scheduler` is copied, never consumed."""
    device = cond.states.device
    noise, generators = clip_noise(seeds, frames, _frame_shape(model), device)
    fresh = type(scheduler).from_config(scheduler.config)
    velocity = clip_velocity(model, None if actions is None else actions.to(device), causal)
    states = flow_match_sample(velocity, fresh, noise, steps, cond, null, guidance, generators)
    return collections.deque(states, maxlen=1)[0].x


@dataclass(frozen=True)
class Chunk:
    start: int  # index of the chunk's first frame in the whole stream
    frames: torch.Tensor  # (B, c, C, H, W) in [-1, 1]
    nfe: int  # network evaluations spent since the previous chunk (the previous chunk's cache commit, its own steps)


@torch.no_grad()
def stream_chunks(
    model,
    scheduler,
    seeds: list[int],
    steps: int | Callable[[int], int],
    text: Callable[[int], TextEmbedding],
    actions: Callable[[int, int], torch.Tensor | None] | None = None,
    frames: int | None = None,
    guidance: float = 1.0,
    null: TextEmbedding | None = None,
) -> Iterator[Chunk]:
    """Chunk after chunk of a causal model, for `frames` frames (None: until the caller stops).

    `text(frame_index)` and `actions(frame_index, count)` are asked before every chunk, so a prompt or
    an action may change between chunks; they return the (B, ...) embedding and (B, count) action
    ids. `steps` is the steps per chunk, or a function of the chunk's index (an asymmetric schedule).
    A distilled student runs without CFG (guidance is distilled in); a causally trained teacher runs
    with it: `guidance` > 1 and the `null` embedding, the conditioned and null streams each keeping
    their own half of a doubled KV cache. Stopping iteration frees the cache.

    A chunk is handed out as soon as it is denoised; it is committed to the cache only when the caller asks
    for the next one (the commit is needed by the next chunk, not by the viewer). So the first frame comes one
    network evaluation sooner, and a finite stream never commits its last chunk. Same frames either way.
    """
    steps_for = steps if callable(steps) else (lambda _index, k=steps: k)
    cfg = guidance > 1.0
    if cfg and null is None:
        raise ValueError("classifier-free guidance needs the null embedding")
    chunk = int(model.config.chunk)
    shape = _frame_shape(model)
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    cache = model.new_cache(len(seeds) * (2 if cfg else 1))
    null = null.to(device, dtype) if cfg else None
    generators = [torch.Generator().manual_seed(int(seed)) for seed in seeds]
    start = 0
    commit = None  # the previous chunk's cache commit, run when the next chunk is asked for
    while frames is None or start < frames:
        spent = 0
        if commit is not None:
            spent = commit()
        count = chunk if frames is None else min(chunk, frames - start)
        noise = torch.stack([torch.randn((count, *shape), generator=g) for g in generators]).to(device)
        emb = text(start).to(device, dtype)
        acts = actions(start, count) if actions is not None else None
        if acts is not None:  # checked once here (on the CPU if given there), not at every network call
            model.check_action_ids(acts)
            acts = acts.to(device)

        if cfg and acts is not None:
            acts = torch.cat([acts, acts])  # the sampler stacks [cond; null]: both halves take the same actions

        def velocity(x: torch.Tensor, t: torch.Tensor, e: TextEmbedding, _a=acts, _s=start) -> torch.Tensor:
            sigma = (t.float() / 1000).view(-1, 1).expand(x.shape[0], x.shape[1]).to(dtype)
            out = model.forward_chunk(x.to(dtype), sigma, e.states, e.pooled, _a, cache, _s, action_ids_checked=True)
            return out.to(x.dtype)

        fresh = type(scheduler).from_config(scheduler.config)
        k = steps_for(start // chunk)
        states = flow_match_sample(velocity, fresh, noise, k, emb, null if cfg else emb, guidance, generators)
        last = collections.deque(states, maxlen=1)[0]
        clean = last.x.clamp(-1, 1)

        def commit(clean=clean, emb=emb, acts=acts, start=start) -> int:
            if cfg:  # both halves of the cache remember the same (guided) frames
                both = TextEmbedding.cat(emb, null)
                doubled = torch.cat([clean, clean]).to(dtype)
                model.commit_chunk(doubled, both.states, both.pooled, acts, cache, start, action_ids_checked=True)
                return 2
            model.commit_chunk(clean.to(dtype), emb.states, emb.pooled, acts, cache, start, action_ids_checked=True)
            return 1

        yield Chunk(start, clean, spent + last.nfe)
        start += count
