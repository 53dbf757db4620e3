"""Guidance distillation: fold classifier-free guidance into the network (Meng et al. 2023, "On
Distillation of Guided Diffusion Models", arXiv:2210.03142, stage 1).

The teacher's CFG velocity at scale w costs two evaluations, v_null + w (v_cond - v_null). The
student is the teacher's UNet with one extra input, the scale w (diffusers' `time_cond_proj_dim`:
a sinusoidal embedding of w - 1, projected and added to the timestep embedding, as in LCM), and
regresses that velocity in one evaluation:

    w ~ U[w_min, w_max],  sigma ~ logit-normal,  x_sigma = (1 - sigma) x0 + sigma eps  (x0: rendered data),
    L = E || v_student(x_sigma, sigma, c, w) - sg(v_null + w (v_cond - v_null)) ||^2.

The new projection starts at zero, so the student starts as the teacher's conditional branch.
It keeps the teacher's sampler (deterministic Euler, same steps, shift and default guidance) and
runs one network evaluation per step instead of two. Stage 2 of Meng et al. (progressive step
distillation) is a separate method.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from engines.denoisers import GUIDANCE_EMBEDDING_DIM, embeds_guidance, unwrap, velocity
from engines.text_encoder import TextEncoder
from trainer import distill
from trainer.config import ConfigError, TrainConfig, build
from trainer.image_task import render_batch
from trainer.methods.base import ImageMethod
from trainer.methods.flow_matching import shift_sigma

COND_PROJ = "time_embedding.cond_proj."


@dataclass
class GuidanceConfig:
    w_min: float = 1.0  # guidance scales the student learns, sampled uniformly per image
    w_max: float = 6.0
    logit_mean: float = 0.0  # noise levels: the teacher's own training distribution by default
    logit_std: float = 1.0
    shift: float = 1.0

    def __post_init__(self) -> None:
        if self.w_min < 0 or self.w_min > self.w_max:
            raise ConfigError(f"method_config needs 0 <= w_min <= w_max, got w_min={self.w_min}, w_max={self.w_max}")
        if self.logit_std < 0 or self.shift <= 0:
            raise ConfigError("method_config needs logit_std >= 0 and shift > 0")


def with_guidance_input(network, dim: int = GUIDANCE_EMBEDDING_DIM):
    """A copy of a UNet2DConditionModel that also takes the guidance scale (`time_cond_proj_dim`),
    equal to the original at every scale: all weights copied, the new projection zero."""
    from diffusers import UNet2DConditionModel

    if not isinstance(network, UNet2DConditionModel):
        raise ConfigError(
            f"guidance distillation needs a UNet2DConditionModel teacher (it adds a guidance input through "
            f"time_cond_proj_dim); {type(network).__name__} has no guidance input"
        )
    student = type(network).from_config({**network.config, "time_cond_proj_dim": dim})
    missing, unexpected = student.load_state_dict(network.state_dict(), strict=False)
    expected = {k for k in student.state_dict() if k.startswith(COND_PROJ)}
    if set(missing) != expected or unexpected or not expected:
        # A diffusers version that wires the guidance input differently: refuse rather than start from a half-copied net.
        raise ConfigError(
            f"rebuilding the teacher with a guidance input changed more than {COND_PROJ}*: "
            f"missing {sorted(set(missing) - expected)}, unexpected {sorted(unexpected)}"
        )
    with torch.no_grad():
        student.time_embedding.cond_proj.weight.zero_()
    return student


class GuidanceDistillation(ImageMethod):
    """Roles: `student` (trained, EMA'd, exported). Frozen: the teacher."""

    primary = "student"

    role = "student"
    stochastic_sampling = False  # the teacher's deterministic Euler sampler, one evaluation per step

    def __init__(self, config: TrainConfig, device: torch.device, text_encoder: TextEncoder) -> None:
        self.config = config
        self.args: GuidanceConfig = build(GuidanceConfig, config.method_config, prefix="method_config.")
        self.device = device
        self.text_encoder = text_encoder
        self.teacher = distill.load_teacher(config.teacher, device, config.method)
        self.teacher_id = self.teacher.id
        from diffusers import UNet2DConditionModel

        kind = type(unwrap(self.teacher.network)).__name__
        if not isinstance(unwrap(self.teacher.network), UNet2DConditionModel):
            raise ConfigError(
                f"guidance distillation needs a UNet2DConditionModel teacher; {self.teacher_id!r} is an {kind}, which "
                "takes no guidance input (distil it with dmd2, or add a guidance embedding to the transformer first)"
            )
        if embeds_guidance(self.teacher.network):
            raise ConfigError(f"teacher {self.teacher_id!r} already takes the guidance scale as an input")
        from trainer.networks import load_network

        base = load_network(config.init_from) if config.init_from else self.teacher.network
        # init_from may be an earlier guidance student (continue it) or any plain UNet (extend it).
        self.networks = {"student": base if embeds_guidance(base) else with_guidance_input(base)}
        self.ema_roles = ("student",)
        card = self.teacher.card
        why = "the student keeps the teacher's sampler"
        self.override_export("default_steps", card.default_steps, why)
        self.override_export("default_guidance", card.default_guidance, why)
        self.override_export("scheduler_shift", self.teacher.scheduler_shift, why)
        if config.compile:
            self.teacher.network = torch.compile(self.teacher.network)

    def loss(self, phase: str, networks: dict, batch: dict, rng: torch.Generator):
        x0 = render_batch(batch, self.resolution, self.device)
        b = x0.shape[0]
        emb = self.text_encoder.encode_tokens(batch["tokens"])
        a = self.args
        w = a.w_min + (a.w_max - a.w_min) * torch.rand(b, generator=rng, device=self.device)
        u = a.logit_mean + a.logit_std * torch.randn(b, generator=rng, device=self.device)
        sigma = shift_sigma(torch.sigmoid(u), a.shift)
        noise = torch.randn(x0.shape, generator=rng, device=self.device)
        x = distill.add_noise(x0, noise, sigma)
        t = sigma * 1000
        with torch.no_grad():
            target = distill.guided_velocity(self.teacher.network, x, sigma, emb, self.text_encoder.null(b), w)
        v = velocity(networks["student"], x, t, emb, guidance=w)
        loss = torch.mean((v.float() - target.float()) ** 2)
        return loss, {"loss": loss.detach(), "w_mean": w.mean(), "sigma_mean": sigma.mean()}
