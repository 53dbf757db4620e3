"""What every distillation method shares: the frozen teacher, its guided velocity, clean-image
predictions, and backward simulation of a few-step student's own sampler.

Conventions (engines/samplers.py): x_sigma = (1 - sigma) x0 + sigma eps, velocity v = eps - x0,
timestep = 1000 sigma, x0 = x_sigma - sigma v. Students keep the teacher's parameterisation, so a
student checkpoint is the same kind of network with a different sampler and default steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from engines.card import ModelCard, load_card
from engines.denoisers import velocity
from engines.errors import CheckpointError
from engines.samplers import cfg_velocity
from engines.text_encoder import TextEmbedding
from trainer.config import ConfigError


@dataclass
class Teacher:
    network: torch.nn.Module  # frozen, eval mode, float32 (autocast decides the compute dtype)
    card: ModelCard
    scheduler_shift: float

    @property
    def id(self) -> str:
        return self.card.id


@dataclass
class CriticDistillConfig:
    """Settings every DMD-style method shares (DMD2 for images, Self-Forcing for video): a frozen teacher's
    CFG real score against a critic trained on the student's samples, and the student's step counts."""

    teacher_guidance: float | None = None  # CFG of the real score; None: the teacher card's default
    critic_updates: int = 5  # critic steps per student step (two time-scale update rule)
    critic_lr_scale: float = 1.0
    student_steps: list[int] = field(default_factory=lambda: [1, 2, 4])  # step counts one checkpoint serves
    sigma_min: float = 0.02  # noise levels where the two scores are compared
    sigma_max: float = 0.98
    # > 1 spends more of them at high noise, where layout and object count are decided: sigma = s u / (1 + (s - 1) u)
    # for u uniform in [sigma_min, sigma_max] (SD3's timestep shift, as flow-matching teachers train); 1 = uniform
    sigma_shift: float = 1.0
    # Reward-weighted DMD (Re-DMD, Reward Forcing sec. 3.3; Stream-R1): each sample's DMD loss is weighted by
    # exp(beta * r) / mean(exp(beta * r)) with r in [0, 1] from the world's judge; 0 = plain DMD. Beta < 0 turns it
    # round: the rollouts the judge rejects get the larger share of the gradient (session 25: at beta 2 and a pass
    # rate of 0.73, rejected image rollouts got a seventh of an accepted one's weight; the judge fell 0.03, within noise)
    reward_beta: float = 0.0
    reward_workers: int = 0  # processes judging the rewards (trainer/judge_pool.py); 0: the training process
    # DMD's regression loss (Yin et al. 2023, sec. 3.3) on a fixed set of teacher ODE samples, against mode collapse;
    # 0 = off (DMD2); DMD used 0.25. Each method says how its student is pulled towards the pairs.
    regression_weight: float = 0.0

    def __post_init__(self) -> None:
        if not math.isfinite(self.reward_beta):
            raise ConfigError(f"method_config.reward_beta must be a finite number, got {self.reward_beta}")
        if self.reward_workers < 0:
            raise ConfigError(f"method_config.reward_workers must be >= 0, got {self.reward_workers}")
        if self.sigma_shift <= 0:
            raise ConfigError(f"method_config.sigma_shift must be > 0, got {self.sigma_shift}")
        if self.regression_weight < 0:
            raise ConfigError(f"method_config.regression_weight must be >= 0, got {self.regression_weight}")
        if self.critic_updates < 1:
            raise ConfigError("method_config.critic_updates must be >= 1")
        if not self.student_steps or any(not isinstance(k, int) or k < 1 for k in self.student_steps):
            raise ConfigError(f"method_config.student_steps must be a list of step counts >= 1, got {self.student_steps!r}")
        if not 0 < self.sigma_min < self.sigma_max <= 1:
            raise ConfigError("method_config needs 0 < sigma_min < sigma_max <= 1")

    @property
    def rewarded(self) -> bool:
        """Whether rollouts are judged and their DMD losses weighted (any beta but 0)."""
        return self.reward_beta != 0


def load_teacher(path: str | None, device: torch.device, method: str, modality: str = "image") -> Teacher:
    """The frozen teacher named by the config's `teacher`, with clear errors for a missing path,
    a damaged checkpoint or one of another modality. `modality` is what the method distils
    (image denoisers, or video VideoDiTs)."""
    kind = f"{'an' if modality[0] in 'aeiou' else 'a'} {modality}"
    if not path:
        raise ConfigError(f"method {method!r} distils a teacher: set `teacher` to {kind} checkpoint directory")
    directory = Path(path)
    if not directory.is_dir():
        raise ConfigError(f"teacher {path!r} does not exist (expected a checkpoint directory with card.json)")
    try:
        card = load_card(directory)
        if card.modality != modality:
            raise ConfigError(f"teacher {card.id!r} is a {card.modality} model; {method!r} needs {kind} teacher")
        from engines.checkpoints import load_scheduler
        from engines.video import load_video_network
        from trainer.networks import load_network

        load = load_video_network if modality == "video" else load_network
        network = load(directory).to(device).requires_grad_(False).eval()
        shift = float(load_scheduler(directory / "scheduler").config.get("shift", 1.0))
    except CheckpointError as err:
        raise ConfigError(f"teacher {path!r} cannot be loaded: {err}") from err
    return Teacher(network, card, shift)


def add_noise(x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    s = sigma.view(-1, *([1] * (x0.dim() - 1)))
    return (1 - s) * x0 + s * noise


def predict_x0(model, x: torch.Tensor, sigma: torch.Tensor, emb: TextEmbedding) -> torch.Tensor:
    """One network evaluation: the clean image implied by the predicted velocity."""
    v = velocity(model, x, sigma * 1000, emb)
    return x - sigma.view(-1, *([1] * (x.dim() - 1))) * v


def guided_velocity(
    model, x: torch.Tensor, sigma: torch.Tensor, cond: TextEmbedding, null: TextEmbedding, guidance: float | torch.Tensor
) -> torch.Tensor:
    """The teacher's classifier-free-guided velocity at flow noise level sigma (B,); `guidance` is
    one scale or one per image."""
    v, _ = cfg_velocity(lambda x_, t_, e_: velocity(model, x_, t_, e_), x, sigma * 1000, cond, null, guidance)
    return v


def guided_x0(
    model, x: torch.Tensor, sigma: torch.Tensor, cond: TextEmbedding, null: TextEmbedding, guidance: float
) -> torch.Tensor:
    """The teacher's classifier-free-guided clean-image estimate (the DMD 'real score')."""
    v = guided_velocity(model, x, sigma, cond, null, guidance)
    return x - sigma.view(-1, *([1] * (x.dim() - 1))) * v


def dmd_noise_level(args: CriticDistillConfig, b: int, rng: torch.Generator, device: torch.device) -> torch.Tensor:
    """(b,) noise levels where DMD compares the real and fake scores: uniform in [sigma_min, sigma_max], then shifted."""
    u = args.sigma_min + (args.sigma_max - args.sigma_min) * torch.rand(b, generator=rng, device=device)
    return args.sigma_shift * u / (1 + (args.sigma_shift - 1) * u)


def dmd_gradient(x0: torch.Tensor, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """DMD's KL gradient with respect to the generator's output (Yin et al. 2023, eq. 7), normalised
    per sample by how far the output is from the teacher's estimate: (fake - real) / mean|x0 - real|.
    Any shape with the batch first (images, clips)."""
    dims = tuple(range(1, x0.dim()))
    scale = (x0 - real).abs().mean(dim=dims, keepdim=True).clamp(min=1e-4)
    return torch.nan_to_num((fake - real) / scale)


def reward_weighted(per_sample: torch.Tensor, rewards: torch.Tensor | None, beta: float) -> torch.Tensor:
    """Re-DMD's weighting: per-sample losses times exp(beta * r) / mean(exp(beta * r)). The weights average 1, so
    beta moves the loss towards the judge's favourites (beta < 0: towards the samples it rejects) without changing
    its scale (beta 0 or no rewards: plain mean)."""
    if rewards is None:
        return per_sample.mean()
    if per_sample.shape != rewards.shape:
        raise ValueError(f"one reward per sample: losses {tuple(per_sample.shape)}, rewards {tuple(rewards.shape)}")
    weights = torch.exp(beta * rewards.to(per_sample))
    return (per_sample * weights / weights.mean()).mean()


def pseudo_huber(a: torch.Tensor, b: torch.Tensor, c: float) -> torch.Tensor:
    """Per-sample sqrt(||a - b||^2 + c^2) - c over all but the batch dimension, in float32: (B,)."""
    squared = ((a.float() - b.float()) ** 2).flatten(1).sum(dim=1)
    return torch.sqrt(squared + c * c) - c


def ict_huber_c(x: torch.Tensor) -> float:
    """iCT's pseudo-Huber constant for samples shaped like x[0] (Song & Dhariwal 2023): 0.00054 sqrt(C H W)."""
    return 0.00054 * float(x[0].numel()) ** 0.5


def pick(options: list[int] | tuple[int, ...], generator: torch.Generator) -> int:
    """A seeded choice (the step generator lives on the training device)."""
    index = int(torch.randint(len(options), (1,), generator=generator, device=generator.device).item())
    return options[index]


@torch.no_grad()
def simulate_student(
    model, noise: torch.Tensor, emb: TextEmbedding, grid: torch.Tensor, stop: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Backward simulation (DMD2): run the student's own jump-and-renoise sampler over `grid` for
    `stop` steps from pure noise and return (x, sigma) at grid[stop], the input the student will
    see at that step when it samples. Gradients never flow through the simulated steps."""
    x = noise
    b = noise.shape[0]
    for i in range(stop):
        sigma = grid[i].expand(b).to(noise.device)
        x0 = predict_x0(model, x, sigma, emb)
        fresh = torch.randn(noise.shape, generator=generator, device=noise.device)
        x = add_noise(x0, fresh, grid[i + 1].expand(b).to(noise.device)).to(noise.dtype)
    return x, grid[stop].expand(b).to(noise.device)
