"""sCM: continuous-time consistency distillation in TrigFlow (Lu & Song 2024, arXiv:2410.11081),
as SANA-Sprint applies it to a flow-matching teacher (Chen et al. 2025, arXiv:2503.09641).

TrigFlow, with sigma_d = 1: x_t = cos(t) x0 + sin(t) z, t in [0, pi/2], z ~ N(0, I). Our images lie
in [-1, 1] (flat renders, per-pixel std a little under 1) and, above all, our flow networks were
trained with unit-variance noise, so sigma_d = 1 makes the map between the two parameterisations
exact with no rescaling of the teacher's input.

From TrigFlow to our flow convention (x_s = (1 - s) x0 + s z, v = z - x0, timestep 1000 s):
    divide x_t by (sin t + cos t):  x_t / (sin t + cos t) = (1 - s) x0 + s z  with
        s = sin t / (sin t + cos t),   1 - s = cos t / (sin t + cos t),
    so  x_flow = x_t / (sin t + cos t) at flow noise level s (sin t + cos t >= 1 on [0, pi/2]).
The TrigFlow model output is the PF-ODE velocity F = dx_t/dt = cos(t) z - sin(t) x0. With the flow
network's v at (x_flow, s) standing for z - x0, z = x_flow + (1 - s) v and x0 = x_flow - s v, so
    F = cos t (x_flow + (1 - s) v) - sin t (x_flow - s v)
      = (cos t - sin t) x_flow + (cos t (1 - s) + sin t s) v
      = [(cos t - sin t) x_t + v] / (sin t + cos t)            (since cos^2 + sin^2 = 1).
The consistency function f(x_t, t) = cos(t) x_t - sin(t) F reduces to x_flow - s v: the flow
network's own clean-image estimate, so f(x, 0) = x and nothing changes at export (we train the
flow network through this map; the checkpoint is still a flow-velocity network).

Training (sCM Algorithm 1, distillation): t with tan t = e^tau, tau ~ N(P_mean, P_std^2) (tan t is
EDM's sigma, so sCM's P_mean = -1.0, P_std = 1.4 keep their meaning); dx_t/dt is the teacher's
CFG-guided F; F^- and cos t sin t dF^-/dt come from one forward-mode JVP through the student under
stop-gradient with tangents (cos t sin t dx_t/dt, cos t sin t) for inputs (x_t, t); then
    g = -cos^2 t (F^- - dx_t/dt) - r cos t sin t (x_t + dF^-/dt),   r = min(1, step / warmup)
    g <- g / (rms(g) + c),                                            c = 0.1 (tangent normalisation)
    L = e^{w(t)} mean((F_theta - F^- - g)^2) - w(t)                   (adaptive weighting)
The gradient of L in theta is e^w times -2 g . dF_theta/dtheta, i.e. the continuous-time limit of
consistency distillation (cos t df/dt with f as above). rms (the norm / sqrt(D)) keeps g per element
~1 whatever the resolution, so w settles near 0 rather than at log D.

w(t) is a ~200-parameter MLP on Fourier features of log tan t, a second network (`weighting`,
its own AdamW, checkpointed, so resume stays exact). Its loss separates from the student's (L's
gradient in theta only sees e^w, in phi only sees the per-sample error), so the weighting phase
reuses the student phase's detached errors instead of a second JVP; both see the same parameters,
which makes this the same update as joint training.

Forward-mode AD: PyTorch's flash / memory-efficient SDPA kernels have no forward-AD formula (on
CPU: "Trying to use forward AD with _scaled_dot_product_flash_attention_for_cpu"), so the JVP runs
under sdpa_kernel(SDPBackend.MATH), whose matmul/softmax decomposition has one. The JVP also runs
in float32 (autocast off): dF/dt is a small difference of large terms that bf16 would drown.
GroupNorm, SiLU and the sinusoidal timestep embedding of diffusers' UNet support forward AD.
Caveat: our networks embed timestep 1000 s, so d/dt of the time embedding is large (sCM and
SANA-Sprint use c_noise = t for this reason); tangent normalisation and warm-up bound its effect.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from engines.denoisers import unwrap, velocity
from engines.text_encoder import TextEmbedding, TextEncoder
from trainer import distill
from trainer.config import ConfigError, TrainConfig
from trainer.image_task import render_batch
from trainer.methods.base import DistillationMethod

_CACHE = "_scm_weighting"  # batch key: the student phase's (t, error) for the weighting phase


@dataclass
class SCMConfig:
    teacher_guidance: float | None = None  # CFG of the teacher's PF-ODE; None: the teacher card's default
    p_mean: float = -1.0  # tan t = e^tau, tau ~ N(p_mean, p_std^2)
    p_std: float = 1.4
    tangent_warmup_steps: int = 1000  # r ramps 0 -> 1 over these steps (0: no warm-up)
    tangent_norm_c: float = 0.1  # g / (rms(g) + c)
    adaptive_weighting: bool = True  # learn w(t); False: w = 0
    weighting_lr_scale: float = 10.0  # w(t) has ~200 parameters and must track the student within short runs

    def __post_init__(self) -> None:
        if self.p_std <= 0:
            raise ConfigError(f"method_config.p_std must be > 0, got {self.p_std}")
        if self.tangent_warmup_steps < 0:
            raise ConfigError(f"method_config.tangent_warmup_steps must be >= 0, got {self.tangent_warmup_steps}")
        if self.tangent_norm_c <= 0:
            raise ConfigError(f"method_config.tangent_norm_c must be > 0, got {self.tangent_norm_c}")
        if self.weighting_lr_scale <= 0:
            raise ConfigError(f"method_config.weighting_lr_scale must be > 0, got {self.weighting_lr_scale}")
        if self.teacher_guidance is not None and self.teacher_guidance < 1:
            raise ConfigError(f"method_config.teacher_guidance must be >= 1 (1 = no CFG), got {self.teacher_guidance}")


def _per_sample(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return t.view(-1, *([1] * (like.dim() - 1)))


def trig_to_flow(x_t: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """TrigFlow (x_t, t) -> (x_flow, flow sigma): x_flow = x_t / (sin t + cos t), s = sin t / (sin t + cos t)."""
    total = torch.sin(t) + torch.cos(t)
    return x_t / _per_sample(total, x_t), torch.sin(t) / total


def flow_to_trig_velocity(x_t: torch.Tensor, t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """TrigFlow F = dx_t/dt from the flow velocity v at (x_flow, s): [(cos t - sin t) x_t + v] / (sin t + cos t)."""
    cos, sin = _per_sample(torch.cos(t), x_t), _per_sample(torch.sin(t), x_t)
    return ((cos - sin) * x_t + v) / (cos + sin)


def consistency_x0(x_t: torch.Tensor, t: torch.Tensor, F: torch.Tensor) -> torch.Tensor:
    """f(x_t, t) = cos t x_t - sin t F (equal to the flow network's x_flow - s v)."""
    return _per_sample(torch.cos(t), x_t) * x_t - _per_sample(torch.sin(t), x_t) * F


def trig_velocity(model, x_t: torch.Tensor, t: torch.Tensor, emb: TextEmbedding) -> torch.Tensor:
    """F_theta(x_t, t) of a flow-velocity network, through the exact conversion (differentiable in x_t and t)."""
    x_flow, sigma = trig_to_flow(x_t, t)
    return flow_to_trig_velocity(x_t, t, velocity(model, x_flow, sigma * 1000, emb))


@torch.no_grad()
def trig_tangent(
    model, x_t: torch.Tensor, t: torch.Tensor, dxt_dt: torch.Tensor, emb: TextEmbedding
) -> tuple[torch.Tensor, torch.Tensor]:
    """(F^-, cos t sin t dF^-/dt) along the PF-ODE, from one forward-mode JVP with tangents
    (cos t sin t dx_t/dt, cos t sin t); the cos t sin t factor rides in the tangents, where it
    keeps the product finite near t = pi/2 (sCM). Stop-gradient: never differentiated in theta."""
    scale = torch.cos(t) * torch.sin(t)
    fn = lambda x, tt: trig_velocity(model, x, tt, emb)
    with sdpa_kernel(SDPBackend.MATH), torch.autocast(x_t.device.type, enabled=False):
        return torch.func.jvp(fn, (x_t, t), (_per_sample(scale, x_t) * dxt_dt, scale))


class AdaptiveWeight(torch.nn.Module):
    """w_phi(t): a small MLP on Fourier features of log tan t, zero at initialisation."""

    def __init__(self, frequencies: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0), hidden: int = 16) -> None:
        super().__init__()
        self.register_buffer("frequencies", torch.tensor(frequencies), persistent=False)
        self.net = torch.nn.Sequential(
            torch.nn.Linear(1 + 2 * len(frequencies), hidden), torch.nn.SiLU(), torch.nn.Linear(hidden, 1)
        )
        torch.nn.init.zeros_(self.net[-1].weight)  # w = 0: the plain sCM loss until the weighting learns
        torch.nn.init.zeros_(self.net[-1].bias)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        # log tan t = log sin t - log cos t, clamped: float32 arctan can round up to just past pi/2.
        tau = torch.log(torch.sin(t).clamp(min=1e-7)) - torch.log(torch.cos(t).clamp(min=1e-7))
        angles = tau.float()[:, None] * self.frequencies[None]
        features = torch.cat([tau.float()[:, None] / 4, torch.sin(angles), torch.cos(angles)], dim=1)
        return self.net(features).squeeze(1)


class SCM(DistillationMethod):
    """Roles: `student` (trained, EMA'd, exported), `weighting` (w(t), trained). Frozen: the teacher."""

    primary = "student"
    stochastic_sampling = True
    export_overrides = {"default_guidance": 1.0}  # the teacher's CFG is distilled in

    def __init__(self, config: TrainConfig, device: torch.device, text_encoder: TextEncoder) -> None:
        self._init_distillation(config, device, text_encoder, SCMConfig)
        self.args: SCMConfig
        from trainer.networks import load_network

        self.networks: dict[str, torch.nn.Module] = {"student": load_network(config.init_from or config.teacher)}
        if self.args.adaptive_weighting:
            self.networks["weighting"] = AdaptiveWeight()
        self.ema_roles = ("student",)
        self.lr_scales = {"weighting": self.args.weighting_lr_scale}
        self.step = 0  # set by phases(): the tangent warm-up is a pure function of the step (exact resume)
        if config.compile:
            self.teacher.network = torch.compile(self.teacher.network)

    def phases(self, step: int) -> list[str]:
        self.step = step
        return ["student", "weighting"] if self.args.adaptive_weighting else ["student"]

    def warmup(self) -> float:
        if self.args.tangent_warmup_steps == 0:
            return 1.0
        return min(1.0, self.step / self.args.tangent_warmup_steps)

    def sample_t(self, b: int, rng: torch.Generator) -> torch.Tensor:
        tau = self.args.p_mean + self.args.p_std * torch.randn(b, generator=rng, device=self.device)
        return torch.atan(torch.exp(tau))

    def loss(self, phase: str, networks: dict, batch: dict, rng: torch.Generator):
        if phase == "weighting":
            return self._weighting_loss(networks["weighting"], batch)
        student = networks["student"]
        x0 = render_batch(batch, self.resolution, self.device)
        b = x0.shape[0]
        emb = self.text_encoder.encode_tokens(batch["tokens"])
        t = self.sample_t(b, rng)
        z = torch.randn(x0.shape, generator=rng, device=self.device)
        cos, sin = _per_sample(torch.cos(t), x0), _per_sample(torch.sin(t), x0)
        x_t = cos * x0 + sin * z
        r = self.warmup()
        with torch.no_grad():
            null = self.text_encoder.null(b)
            x_flow, sigma = trig_to_flow(x_t, t)
            dxt_dt = flow_to_trig_velocity(
                x_t, t, distill.guided_velocity(self.teacher.network, x_flow, sigma, emb, null, self.guidance)
            )
            # The bare module: DDP / compile wrappers have no business inside a JVP without a graph.
            F_minus, dF_scaled = trig_tangent(unwrap(student), x_t, t, dxt_dt, emb)
            g = -cos * cos * (F_minus - dxt_dt.float()) - r * (cos * sin * x_t + dF_scaled)
            rms = g.flatten(1).pow(2).mean(dim=1).sqrt()
            g = g / _per_sample(rms + self.args.tangent_norm_c, g)
        F = trig_velocity(student, x_t, t, emb)
        error = (F.float() - F_minus - g).pow(2).flatten(1).mean(dim=1)
        w = networks["weighting"](t).detach() if "weighting" in networks else torch.zeros_like(t)
        loss = (torch.exp(w) * error).mean()
        batch[_CACHE] = (t.detach(), error.detach())
        metrics = {
            "loss/scm": (torch.exp(w) * error - w).mean().detach(),
            "scm/error": error.mean().detach(),
            "scm/tangent_rms": rms.mean(),
            "scm/tangent_warmup": torch.tensor(r),
        }
        return loss, metrics

    def _weighting_loss(self, weighting: torch.nn.Module, batch: dict):
        if _CACHE not in batch:
            raise RuntimeError("the sCM weighting phase runs after the student phase of the same batch")
        t, error = batch.pop(_CACHE)
        w = weighting(t)
        loss = (torch.exp(w) * error - w).mean()
        return loss, {"loss/weighting": loss.detach(), "scm/w_mean": w.mean().detach()}
