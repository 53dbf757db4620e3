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
    velocity: VelocityFn,
    x: torch.Tensor,
    t: torch.Tensor,
    cond: TextEmbedding,
    null: TextEmbedding,
    guidance: float | torch.Tensor,
) -> tuple[torch.Tensor, int]:
    """Classifier-free guidance in one batched call: v = v_null + g (v_cond - v_null). Returns (v, nfe).
    `guidance` is one scale, or one per image (B,) (guidance distillation trains on many at once)."""
    if not torch.is_tensor(guidance) and guidance <= 1.0:
        return velocity(x, t, cond), 1
    both = TextEmbedding.cat(cond, null)
    v_cond, v_null = velocity(torch.cat([x, x]), torch.cat([t, t]), both).chunk(2)
    if torch.is_tensor(guidance):
        guidance = guidance.to(v_null.dtype).view(-1, *([1] * (x.dim() - 1)))
    return v_null + guidance * (v_cond - v_null), 2


def student_sigmas(steps: int) -> list[float]:
    """Evenly spaced, ending away from zero: 1 -> [1], 2 -> [1, .5], 4 -> [1, .75, .5, .25] (the
    'trailing' spacing of few-step students). Grids for 1, 2 and 4 steps nest, so a student trained
    on the 4-step grid also serves 1 and 2 steps. The scheduler's shift is applied on top."""
    return [1.0 - i / steps for i in range(steps)]


def set_sampler_timesteps(scheduler, steps: int, device: torch.device | str | None = None) -> None:
    """The one rule for a sampler's grid: Euler schedulers use diffusers' own spacing (ending near
    sigma 0); stochastic (jump-and-renoise) schedulers use `student_sigmas`, since re-noising to
    near zero would make every step after the first a no-op."""
    if scheduler.config.get("stochastic_sampling", False):
        scheduler.set_timesteps(sigmas=student_sigmas(steps), device=device)
    else:
        scheduler.set_timesteps(steps, device=device)


def sampler_sigmas(scheduler, steps: int) -> torch.Tensor:
    """The sigmas (without the final 0) a fresh copy of `scheduler` visits in `steps` steps."""
    fresh = type(scheduler).from_config(scheduler.config)
    set_sampler_timesteps(fresh, steps)
    return fresh.sigmas[:-1].float()


def flow_match_sample(
    velocity: VelocityFn,
    scheduler,
    noise: torch.Tensor,
    steps: int,
    cond: TextEmbedding,
    null: TextEmbedding,
    guidance: float = 1.0,
    generator: list[torch.Generator] | None = None,
    embedded_guidance: bool = False,
) -> Iterator[SampleState]:
    """Sampling with a diffusers flow-matching scheduler, yielding every step: the Euler ODE, or,
    when the scheduler has `stochastic_sampling`, jump-to-x0-and-renoise (consistency/DMD students),
    whose fresh noise comes from `generator` (one per batch image, so an image reproduces alone).

    `embedded_guidance`: the network takes the scale itself (guidance-distilled), one call per step;
    then `velocity` is called as velocity(x, t, cond, guidance).
    `scheduler` is consumed (diffusers schedulers keep a step index): pass a fresh one per call.
    """
    set_sampler_timesteps(scheduler, steps, noise.device)
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(0)  # as pipelines do: step() then skips looking t up in the timesteps (a GPU sync)
    x = noise
    nfe = 0
    for i, t in enumerate(scheduler.timesteps):
        sigma = scheduler.sigmas[i].to(x.device, x.dtype)
        t_batch = t.expand(x.shape[0]).to(x.dtype)
        if embedded_guidance:
            v, cost = velocity(x, t_batch, cond, guidance), 1
        else:
            v, cost = cfg_velocity(velocity, x, t_batch, cond, null, guidance)
        nfe += cost
        x0 = x - sigma * v
        x = scheduler.step(v, t, x, generator=generator).prev_sample
        yield SampleState(i + 1, steps, x, x0, nfe)
