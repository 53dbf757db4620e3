"""LCM: latent consistency distillation from the teacher's ODE solver (Luo et al. 2023,
arXiv:2310.04378; consistency distillation, Song et al. 2023, arXiv:2303.01469).

The student (initialised from the teacher, same velocity parameterisation) defines the
consistency function through its clean-image estimate,

    f(x, sigma) = x - sigma * v_student(x, sigma),

which meets the boundary condition f(x, 0) = x by construction. Training discretises sigma on
the teacher's own N-step Euler grid (shift-aware, diffusers' FlowMatchEulerDiscreteScheduler)
1 = s_0 > s_1 > ... > s_N = 0 and picks a pair (s_n, s_{n+k}) with skip k. From a noised world
render x_{s_n} = (1 - s_n) x0 + s_n eps, one CFG-guided Euler step of the teacher's probability-flow
ODE gives x_{s_{n+k}}, and the student learns

    L = lambda_n * d( f_theta(x_{s_n}, s_n), sg f_theta(x_{s_{n+k}}, s_{n+k}) ),
    d(a, b) = sqrt(||a - b||^2 + c^2) - c,   c = 0.00054 sqrt(C H W)       (pseudo-Huber, iCT)

Target network (`target`): `online`, the student itself under stop-gradient (theta^- = sg(theta)),
as in improved consistency training (iCT, Song & Dhariwal 2023), ECT and sCM; or `ema`, LCM's and
consistency distillation's slowly moving target, here the loop's own EMA of the student (decay
`ema_decay`, the EMA that is exported). The loop checkpoints that EMA, so resume stays exact, which a
second EMA kept on the method would not be (it would reset to the student on every resume). On the
stage-5c teacher (session 21, one shared H100, 381 steps) the online target diverged slowly: the loss
rose from 3.0 to 3.8 and the gradient norm from 238 to 669, and the students kept grain on every image.
The EMA target (session 22, alone, 485 steps) drew clean images: FD 23.4 at 4 steps against the online
target's 5701 (bench/results/device/reflow-dmd2-lcm-ema-h100/), so configs/shapes-lcm.yaml uses it.

Weighting: iCT's lambda = 1 / (s_n - s_{n+k}), normalised by the nominal step k/N so that an
unshifted grid weighs every pair ~1; on a shifted grid (small steps at high noise) the high-noise
pairs, which decide 1-step samples, weigh more. `weighting: uniform` gives LCM's lambda = 1.

The exported sampler jumps to f and re-noises (stochastic), so one checkpoint serves 1-4 steps on
the engines' trailing grids: every noise level the sampler visits lies in the trained range.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from engines.denoisers import unwrap
from engines.text_encoder import TextEncoder
from trainer import distill
from trainer.config import ConfigError, TrainConfig
from trainer.image_task import new_scheduler, render_batch
from trainer.methods.base import DistillationMethod

WEIGHTINGS = ("inverse_step", "uniform")
TARGETS = ("online", "ema")


@dataclass
class LCMConfig:
    teacher_guidance: float | None = None  # CFG distilled into the student; None: the teacher card's default
    # LCM's discretisation: 1000 training timesteps with skip 20, i.e. consecutive points of a 50-step grid.
    num_timesteps: int = 50  # N: points of the teacher's Euler grid (plus the final sigma = 0)
    skip: int = 1  # k: the teacher's Euler step spans k grid intervals
    huber_c: float | None = None  # pseudo-Huber c; None: iCT's 0.00054 * sqrt(C * H * W)
    weighting: str = "inverse_step"  # inverse_step (iCT) | uniform (LCM)
    target: str = "online"  # online: sg(student) (iCT) | ema: the loop's EMA of the student (LCM, CD)

    def __post_init__(self) -> None:
        if self.num_timesteps < 2:
            raise ConfigError(f"method_config.num_timesteps must be >= 2, got {self.num_timesteps}")
        if not 1 <= self.skip <= self.num_timesteps:
            raise ConfigError(f"method_config.skip must be in [1, num_timesteps={self.num_timesteps}], got {self.skip}")
        if self.teacher_guidance is not None and self.teacher_guidance < 1:
            raise ConfigError(f"method_config.teacher_guidance must be >= 1 (1 = no CFG), got {self.teacher_guidance}")
        if self.huber_c is not None and self.huber_c <= 0:
            raise ConfigError(f"method_config.huber_c must be > 0, got {self.huber_c}")
        if self.weighting not in WEIGHTINGS:
            raise ConfigError(f"method_config.weighting must be one of {', '.join(WEIGHTINGS)}, got {self.weighting!r}")
        if self.target not in TARGETS:
            raise ConfigError(f"method_config.target must be one of {', '.join(TARGETS)}, got {self.target!r}")


def euler_grid(num_timesteps: int, shift: float) -> torch.Tensor:
    """The teacher's N-step Euler grid with the final 0: (N + 1,) from 1 down to 0, shifted as it samples."""
    scheduler = new_scheduler(shift)
    scheduler.set_timesteps(num_timesteps)
    return scheduler.sigmas.float()


class LCM(DistillationMethod):
    """Roles: `student` (trained, EMA'd, exported). Frozen: the teacher."""

    primary = "student"
    stochastic_sampling = True
    export_overrides = {"default_guidance": 1.0}  # the teacher's CFG is distilled in

    def __init__(self, config: TrainConfig, device: torch.device, text_encoder: TextEncoder) -> None:
        self._init_distillation(config, device, text_encoder, LCMConfig)
        self.args: LCMConfig
        from trainer.networks import load_network

        self.networks = {"student": load_network(config.init_from or config.teacher)}
        self.ema_roles = ("student",)
        self.ema: dict[str, torch.nn.Module] = {}
        # The shift the student ships with: its 1-4 step grids are where consistency matters most.
        self.grid = euler_grid(self.args.num_timesteps, config.export.scheduler_shift).to(device)
        if config.compile:
            self.teacher.network = torch.compile(self.teacher.network)

    def attach_ema(self, ema: dict[str, torch.nn.Module]) -> None:
        """The loop's EMA networks (checkpointed with the run): the `ema` target reads the student's."""
        self.ema = ema

    def _target_network(self, student):
        if self.args.target == "online":
            return unwrap(student)  # the bare module: no DDP hooks needed without a graph
        if "student" not in self.ema:
            raise RuntimeError("method_config.target 'ema' needs the training loop's EMA of the student (attach_ema)")
        return self.ema["student"]

    def _pairs(self, b: int, rng: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(sigma_n, sigma_{n+k}) per sample, n uniform over the N - k + 1 pairs of the grid."""
        k, n_max = self.args.skip, self.args.num_timesteps - self.args.skip
        n = torch.randint(0, n_max + 1, (b,), generator=rng, device=self.device)
        return self.grid[n], self.grid[n + k]

    def loss(self, phase: str, networks: dict, batch: dict, rng: torch.Generator):
        student = networks["student"]
        x0 = render_batch(batch, self.resolution, self.device)
        b = x0.shape[0]
        emb = self.text_encoder.encode_tokens(batch["tokens"])
        sigma, sigma_next = self._pairs(b, rng)
        noise = torch.randn(x0.shape, generator=rng, device=self.device)
        x = distill.add_noise(x0, noise, sigma)
        with torch.no_grad():
            null = self.text_encoder.null(b)
            v = distill.guided_velocity(self.teacher.network, x, sigma, emb, null, self.guidance)
            x_next = x + (sigma_next - sigma).view(-1, 1, 1, 1) * v  # one Euler step of the teacher's ODE
            # f_theta^- at the next grid point; f(x, 0) = x exactly.
            target = distill.predict_x0(self._target_network(student), x_next, sigma_next, emb)
        prediction = distill.predict_x0(student, x, sigma, emb)
        c = self.args.huber_c if self.args.huber_c is not None else distill.ict_huber_c(x0)
        distance = distill.pseudo_huber(prediction, target, c)
        if self.args.weighting == "inverse_step":
            weight = (self.args.skip / self.args.num_timesteps) / (sigma - sigma_next)
        else:
            weight = torch.ones_like(sigma)
        loss = (weight * distance).mean()
        return loss, {"loss/lcm": loss.detach(), "distance": distance.mean().detach(), "sigma_mean": sigma.mean()}
