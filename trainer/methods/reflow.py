"""Reflow: straighten the teacher's ODE (Liu et al. 2022, "Flow Straight and Fast", arXiv:2209.03003),
then distil the straight flow into one step (InstaFlow, Liu et al. 2023, arXiv:2309.06380).

Stage "reflow". The teacher's probability-flow ODE couples each noise z with a clean image
x0 = ODE_teacher(z | c) (Euler, `pair_steps` steps, with CFG). Training the student (initialised
from the teacher) by flow matching on the straight line between the two ends of each pair,

    x_s = (1 - s) x0 + s z,   L = E_s || v_theta(x_s, s, c) - (z - x0) ||^2,

gives a flow with the same marginals whose paths cross less, so few Euler steps follow it well.
The teacher's sample already includes guidance, so the student learns the guided flow directly:
no CFG dropout, and it samples at guidance 1 (one network evaluation per step). The export's
default guidance is therefore forced to 1.

Stage "distill". From a reflowed student (`init_from`), train the one-step map: at sigma = 1 the
student's clean estimate z - v(z, 1, c) regresses the pair's x0, pairs now coming from the
reflowed student's own ODE (InstaFlow's 2-RF -> one step; L2 instead of LPIPS). The loss is the
reflow loss with s fixed to 1. The export's default steps are forced to 1.

Pairs are made on the fly, per batch, from the step's generator, so a resumed run repeats exactly
and no pair is ever reused. The cost: each training step runs `pair_steps` teacher evaluations on
the batch (twice that with CFG), against about three forward-equivalents for the student's
forward and backward: with 25 steps and CFG, pair generation is ~94% of the step. With
`pair_set: N`, Liu et al.'s way instead: N pairs made once (`trainer/ode_pairs.py`, cached as
`<run_dir>/ode-pairs.safetensors`, reused on resume) and each batch drawn from them, captions included.

Straightness (Liu et al., eq. 8): S = int_0^1 E || (z - x0) - v(x_s, s) ||^2 ds along the model's own
ODE path from z, measured by `straightness` / `measure_straightness` and logged as a training
metric every `straightness_every` steps (and at the last step).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from engines.checkpoints import load_scheduler
from engines.denoisers import embeds_guidance, unwrap, velocity
from engines.image import initial_noise
from engines.samplers import cfg_velocity
from engines.text_encoder import TextEmbedding, TextEncoder
from trainer import distill
from trainer.config import ConfigError, TrainConfig, build
from trainer.image_task import world_batch_cpu
from trainer.methods.base import ImageMethod
from trainer.methods.flow_matching import flow_matching_loss
from trainer.ode_pairs import PairSet, run_pair_set, teacher_pairs
from trainer.worlds import shapes

STAGES = ("reflow", "distill")
PAIR_SOURCES = ("teacher", "init_from")
TIME_SAMPLINGS = ("uniform", "logit_normal")

# (x, sigma (B,)) -> velocity: a conditioned (and guided) field, as straightness integrates it.
Field = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class ReflowConfig:
    stage: str = "reflow"  # reflow: straighten the flow | distill: one-step student from a reflowed one
    pair_steps: int = 25  # Euler steps of the ODE that makes each (noise, image) pair
    teacher_guidance: float | None = None  # CFG of pair generation; None: the pair model's card default
    pair_source: str | None = None  # teacher | init_from; None: teacher for reflow, init_from for distill
    time_sampling: str = "uniform"  # reflow stage: uniform s (Liu et al.) or logit_normal (SD3)
    logit_mean: float = 0.0
    logit_std: float = 1.0
    straightness_every: int = 250  # log the student's straightness every N steps and at the last; 0 = never
    straightness_prompts: int = 8  # fixed held-out captions and seeds, so the curve is comparable over steps
    straightness_steps: int = 16
    pair_set: int = 0  # 0: fresh pairs for every batch; N: a fixed set of N pairs made once (Liu et al.)

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise ConfigError(f"method_config.stage must be one of {', '.join(STAGES)}, got {self.stage!r}")
        if self.pair_source is not None and self.pair_source not in PAIR_SOURCES:
            raise ConfigError(f"method_config.pair_source must be one of {', '.join(PAIR_SOURCES)}, got {self.pair_source!r}")
        if self.time_sampling not in TIME_SAMPLINGS:
            raise ConfigError(
                f"method_config.time_sampling must be one of {', '.join(TIME_SAMPLINGS)}, got {self.time_sampling!r}"
            )
        if self.pair_steps < 1:
            raise ConfigError(f"method_config.pair_steps must be >= 1, got {self.pair_steps}")
        if self.teacher_guidance is not None and self.teacher_guidance < 0:
            raise ConfigError(f"method_config.teacher_guidance must be >= 0, got {self.teacher_guidance}")
        if self.logit_std < 0:
            raise ConfigError(f"method_config.logit_std must be >= 0, got {self.logit_std}")
        if self.pair_set < 0:
            raise ConfigError(f"method_config.pair_set must be >= 0 (0 = fresh pairs every batch), got {self.pair_set}")
        if self.straightness_every < 0 or self.straightness_prompts < 1 or self.straightness_steps < 1:
            raise ConfigError("method_config needs straightness_every >= 0, straightness_prompts >= 1, straightness_steps >= 1")

    @property
    def source(self) -> str:
        return self.pair_source or ("teacher" if self.stage == "reflow" else "init_from")


# ----------------------------------------------------------------------------- straightness


@torch.no_grad()
def straightness(velocity_fn: Field, noise: torch.Tensor, steps: int = 16) -> torch.Tensor:
    """Liu et al.'s straightness of the field along its own Euler path from `noise` (B, ...) on a
    uniform grid of `steps` sigmas from 1 to 0: the mean over steps of the per-element squared
    distance between the velocity and the chord z - x0 (uniform steps make the ds-weighting a
    plain mean). 0 exactly when the path is a straight line travelled at constant speed; it does
    not depend on the sampler's shift, which only re-times the same paths. Returns a 0-d tensor."""
    b = noise.shape[0]
    sigmas = torch.linspace(1.0, 0.0, steps + 1, device=noise.device)
    x = noise.float()
    velocities = []
    for i in range(steps):
        v = velocity_fn(x, sigmas[i].expand(b)).float()
        velocities.append(v)
        x = x + (sigmas[i + 1] - sigmas[i]) * v
    chord = noise.float() - x
    return torch.stack([((v - chord) ** 2).flatten(1).mean(1) for v in velocities]).mean()


def guided_field(network, cond: TextEmbedding, null: TextEmbedding, guidance: float) -> Field:
    """The field a sampler integrates: one call for guidance-embedding networks, else CFG."""
    if embeds_guidance(network):
        return lambda x, sigma: velocity(network, x, sigma * 1000, cond, guidance)
    model = lambda x, t, emb: velocity(network, x, t, emb)
    return lambda x, sigma: cfg_velocity(model, x, sigma * 1000, cond, null, guidance)[0]


def straightness_probe(
    text_encoder: TextEncoder, resolution: int, device: torch.device, n: int = 8
) -> tuple[TextEmbedding, TextEmbedding, torch.Tensor]:
    """The fixed held-out captions (the world's eval scenes of seed 7) and noises (seeds 0..n-1) that training
    logs `straightness` on, so a checkpoint measured later (scripts/probe_straightness.py) compares with the
    curve: (caption embeddings, null embeddings, noise)."""
    noise, _ = initial_noise(list(range(n)), (3, resolution, resolution), device)
    return text_encoder.encode(probe_prompts(n)).to(device), text_encoder.null(n).to(device), noise


def probe_prompts(n: int) -> list[str]:
    """The probe's captions: the world's held-out eval scenes of seed 7 (noise i comes from seed i)."""
    return [s.caption for s in shapes.eval_scenes(n, seed=7)]


@torch.no_grad()
def measure_straightness(
    model,
    text_encoder: TextEncoder | None,
    prompts: list[str],
    seeds: list[int],
    steps: int = 16,
    guidance: float | None = None,
) -> float:
    """Straightness of an ImageEngine (its denoiser, text encoder and default guidance) or of a bare
    network (guidance 1 unless given) over prompts[i] from the noise of seeds[i], as engines draw it.
    For scripts and the bench; training logs the same number as the `straightness` metric."""
    network = getattr(model, "denoiser", model)
    text_encoder = text_encoder or model.text_encoder
    if guidance is None:
        guidance = model.card.default_guidance if hasattr(model, "card") else 1.0
    inner = unwrap(network)
    device = next(network.parameters()).device
    shape = (int(inner.config.in_channels), int(inner.config.sample_size), int(inner.config.sample_size))
    noise, _ = initial_noise(seeds, shape, device)
    cond = text_encoder.encode(prompts).to(device)
    null = text_encoder.null(len(prompts)).to(device)
    return float(straightness(guided_field(network, cond, null, guidance), noise, steps))


def world_batch_with_step(step: int, rank: int, micro: int, **kwargs) -> dict:
    """world_batch_cpu plus the step, so the loss knows when to measure straightness (picklable)."""
    return world_batch_cpu(step, rank, micro, **kwargs) | {"step": step}


class Reflow(ImageMethod):
    """Roles: `student` (trained, EMA'd, exported). Frozen: the teacher, and the pair model when it
    is not the teacher (a reflowed student making its own pairs for the distill stage)."""

    primary = "student"
    make_batch = staticmethod(world_batch_with_step)

    role = "student"
    stochastic_sampling = False  # a (straightened) ODE: the deterministic Euler sampler ships

    def __init__(self, config: TrainConfig, device: torch.device, text_encoder: TextEncoder) -> None:
        self.config = config
        self.args: ReflowConfig = build(ReflowConfig, config.method_config, prefix="method_config.")
        self.device = device
        self.text_encoder = text_encoder
        if self.args.stage == "distill" and not config.init_from:
            raise ConfigError(
                "method_config.stage 'distill' trains a one-step student from a reflowed one: set init_from to a reflow "
                "export (or to the teacher itself, to distil it directly)"
            )
        if self.args.source == "init_from" and not config.init_from:
            raise ConfigError("method_config.pair_source 'init_from' needs init_from set to a checkpoint directory")
        self.teacher = distill.load_teacher(config.teacher, device, config.method)
        self.teacher_id = self.teacher.id
        if self.args.source == "teacher":
            self.pair_model = self.teacher
        else:
            self.pair_model = distill.load_teacher(config.init_from, device, config.method)
        self._check_ode(Path(config.init_from if self.args.source == "init_from" else config.teacher))
        self.guidance = self.args.teacher_guidance
        if self.guidance is None:
            self.guidance = self.pair_model.card.default_guidance or 1.0
        from trainer.networks import load_network

        student = load_network(config.init_from or config.teacher)
        if embeds_guidance(student):
            raise ConfigError("reflow trains a student without a guidance input; init_from a checkpoint without one")
        if int(student.config.sample_size) != self.pair_model.card.resolution:
            raise ConfigError(
                f"the student is {student.config.sample_size}px but the pair model makes "
                f"{self.pair_model.card.resolution}px images"
            )
        self.networks = {"student": student}
        self.ema_roles = ("student",)
        # The student follows its flow without CFG (guidance is in the pairs); the one-step map needs one step.
        self.override_export("default_guidance", 1.0, "the pairs already hold the teacher's guidance")
        if self.args.stage == "distill":
            self.override_export("default_steps", 1, "the distill stage trains the one-step map")
        self.last_straightness: float | None = None
        self._probe: tuple[TextEmbedding, TextEmbedding, torch.Tensor] | None = None
        self._measured: tuple[int, torch.Tensor] | None = None
        self.pairs: PairSet | None = None
        if self.args.pair_set:
            steps, count, guidance = self.args.pair_steps, self.args.pair_set, self.guidance
            self.pairs = run_pair_set(config, self.pair_model, text_encoder, device, steps=steps, guidance=guidance, count=count)
        if config.compile:
            self.pair_model.network = torch.compile(self.pair_model.network)

    def _check_ode(self, checkpoint: Path) -> None:
        scheduler = load_scheduler(checkpoint / "scheduler")
        if scheduler.config.get("stochastic_sampling", False):
            raise ConfigError(
                f"the pair model {checkpoint} samples stochastically (jump and re-noise): it has no ODE for reflow to "
                "straighten; use an ODE model (a teacher or a reflow student)"
            )

    def card_metrics(self) -> dict:
        """For the exported card, once the loop asks methods for extra metrics (see the report)."""
        return {} if self.last_straightness is None else {"straightness": self.last_straightness}

    def _sigma(self, b: int, rng: torch.Generator) -> torch.Tensor:
        if self.args.stage == "distill":
            return torch.ones(b, device=self.device)
        if self.args.time_sampling == "uniform":
            return torch.rand(b, generator=rng, device=self.device)
        return torch.sigmoid(self.args.logit_mean + self.args.logit_std * torch.randn(b, generator=rng, device=self.device))

    def _pairs(self, batch: dict, rng: torch.Generator) -> tuple[TextEmbedding, torch.Tensor, torch.Tensor]:
        """(caption embedding, noise z, the pair model's x0 from z): drawn from the fixed set, or made now
        for the batch's own captions."""
        b = batch["tokens"]["input_ids"].shape[0]
        if self.pairs is not None:
            pairs = self.pairs.batch(self.pairs.draw(b, rng), self.device)
            return self.text_encoder.encode_tokens(pairs["tokens"]), pairs["noise"], pairs["samples"]
        emb = self.text_encoder.encode_tokens(batch["tokens"])
        r = self.resolution
        z = torch.randn((b, 3, r, r), generator=rng, device=self.device)
        null = self.text_encoder.null(b)
        model = self.pair_model
        return emb, z, teacher_pairs(model.network, model.scheduler_shift, z, self.args.pair_steps, emb, null, self.guidance)

    def loss(self, phase: str, networks: dict, batch: dict, rng: torch.Generator):
        emb, z, x0 = self._pairs(batch, rng)
        b = z.shape[0]
        sigma = self._sigma(b, rng)
        # At sigma = 1 (distill stage) x_s = z and the loss is || (z - v) - x0 ||^2: the one-step map.
        v = velocity(networks["student"], distill.add_noise(x0, z, sigma), sigma * 1000, emb)
        loss = flow_matching_loss(v, x0, z)
        metrics = {"loss": loss.detach(), "sigma_mean": sigma.mean()}
        if self._measure_now(int(batch.get("step", -1))):
            metrics["straightness"] = self._straightness(networks["student"], int(batch["step"]))
        return loss, metrics

    def _measure_now(self, step: int) -> bool:
        every = self.args.straightness_every
        return every > 0 and step >= 0 and ((step + 1) % every == 0 or step + 1 == self.config.max_steps)

    def _straightness(self, network, step: int) -> torch.Tensor:
        """Measured once per step (micro-batches reuse it) on fixed held-out captions and seeds."""
        if self._measured is None or self._measured[0] != step:
            if self._probe is None:
                self._probe = straightness_probe(self.text_encoder, self.resolution, self.device, self.args.straightness_prompts)
            cond, null, noise = self._probe
            # The bare network: a measurement must not run through DDP's gradient hooks.
            field = guided_field(unwrap(network), cond, null, 1.0)
            value = straightness(field, noise, self.args.straightness_steps)
            self._measured = (step, value)
            self.last_straightness = float(value)
        return self._measured[1]
