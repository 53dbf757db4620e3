"""The shared samplers. One place for every engine and every training method.

Flow matching (rectified flow) convention, as in SD3 and diffusers' FlowMatchEulerDiscreteScheduler:
    x_sigma = (1 - sigma) * x0 + sigma * noise,   velocity v = noise - x0,
    timestep t = 1000 * sigma,                     x0 = x_sigma - sigma * v.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from engines.text_encoder import TextEmbedding

VelocityFn = Callable[[torch.Tensor, torch.Tensor, TextEmbedding], torch.Tensor]


@dataclass(frozen=True)
class SampleState:
    step: int  # 1-based index of the step just taken
    total: int
    x: torch.Tensor  # the sample after this step
    x0: torch.Tensor  # the model's clean-image estimate at this step (the live preview)
    nfe: int  # network evaluations so far


def cfg_velocity(
    velocity: VelocityFn, x: torch.Tensor, t: torch.Tensor, cond: TextEmbedding, null: TextEmbedding, guidance: float
) -> tuple[torch.Tensor, int]:
    """Classifier-free guidance in one batched call: v = v_null + g (v_cond - v_null). Returns (v, nfe)."""
    if guidance <= 1.0:
        return velocity(x, t, cond), 1
    both = TextEmbedding(
        torch.cat([cond.states, null.states]), torch.cat([cond.pooled, null.pooled]), torch.cat([cond.mask, null.mask])
    )
    v_cond, v_null = velocity(torch.cat([x, x]), torch.cat([t, t]), both).chunk(2)
    return v_null + guidance * (v_cond - v_null), 2


def flow_match_sample(
    velocity: VelocityFn,
    scheduler,
    noise: torch.Tensor,
    steps: int,
    cond: TextEmbedding,
    null: TextEmbedding,
    guidance: float = 1.0,
) -> Iterator[SampleState]:
    """Euler ODE sampling with a diffusers flow-matching scheduler, yielding every step.

    `scheduler` is consumed (diffusers schedulers keep a step index): pass a fresh one per call.
    """
    scheduler.set_timesteps(steps, device=noise.device)
    x = noise
    nfe = 0
    for i, t in enumerate(scheduler.timesteps):
        sigma = scheduler.sigmas[i].to(x.device, x.dtype)
        v, cost = cfg_velocity(velocity, x, t.expand(x.shape[0]).to(x.dtype), cond, null, guidance)
        nfe += cost
        x0 = x - sigma * v
        x = scheduler.step(v, t, x).prev_sample
        yield SampleState(i + 1, steps, x, x0, nfe)
