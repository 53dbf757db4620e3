"""Flow matching for the video teacher (a VideoDiT over whole clips) with CFG dropout.

Per clip: x_sigma = (1 - sigma) x0 + sigma eps, L = || v(x_sigma, sigma, c, actions) - (eps - x0) ||^2.

Two kinds of sample share each batch:
- bidirectional (the teacher proper): one noise level per clip, every frame sees every frame;
- chunk-causal with an independent noise level per chunk (Diffusion Forcing / CausVid's causal
  initialisation): frame f sees only its own and earlier chunks, which may be cleaner or noisier.
The same weights then serve as the DMD teacher (bidirectional) and as the starting point of the
streaming student (causal), so Self-Forcing starts from a network that already runs causally
instead of spending its budget on an ODE-regression warm-up.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from engines.denoisers import unwrap
from engines.text_encoder import TextEncoder
from trainer.config import ConfigError, TrainConfig, build
from trainer.methods.flow_matching import drop_condition, flow_matching_loss, shift_sigma
from trainer.video_task import VideoMethod, render_video_batch


@dataclass
class VideoFMConfig:
    cfg_dropout: float = 0.1
    logit_mean: float = 0.0
    logit_std: float = 1.0
    shift: float = 3.0  # SD3's shift: more training at high noise, where layout and motion are decided
    frames: int = 16  # frames per training clip
    interactive_fraction: float = 0.25  # clips whose player follows per-frame actions
    causal_fraction: float = 0.5  # share of each batch trained chunk-causally with per-chunk noise

    def __post_init__(self) -> None:
        if self.frames < 1:
            raise ConfigError("method_config.frames must be >= 1")
        for name in ("cfg_dropout", "interactive_fraction", "causal_fraction"):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(f"method_config.{name} must be between 0 and 1, got {getattr(self, name)!r}")
        if self.shift <= 0 or self.logit_std < 0:
            raise ConfigError("method_config needs shift > 0 and logit_std >= 0")


def video_network(config: TrainConfig, start: str | None = None):
    """A VideoDiT: the weights of checkpoint `start` (default: init_from), else a fresh `model_preset`."""
    from engines.video import load_video_network
    from engines.video_model import PRESETS, build_video_network

    start = start or config.init_from
    if start:
        return load_video_network(start)
    if config.model_preset not in PRESETS:
        raise ConfigError(f"unknown video model_preset {config.model_preset!r}; known: {', '.join(PRESETS)}")
    return build_video_network(config.model_preset)


class VideoFlowMatching(VideoMethod):
    """Roles: `model` (trained, EMA'd, exported). Trains the video teacher."""

    primary = "model"
    role = "teacher"

    def __init__(self, config: TrainConfig, device: torch.device, text_encoder: TextEncoder) -> None:
        self.config, self.device, self.text_encoder = config, device, text_encoder
        self.args: VideoFMConfig = build(VideoFMConfig, config.method_config, prefix="method_config.")
        self.frames, self.interactive_fraction = self.args.frames, self.args.interactive_fraction
        self.networks = {"model": video_network(config)}
        self.ema_roles = ("model",)

    def _sigma(self, shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
        u = self.args.logit_mean + self.args.logit_std * torch.randn(shape, generator=generator, device=self.device)
        return shift_sigma(torch.sigmoid(u), self.args.shift)

    def loss(self, phase: str, networks: dict, batch: dict, generator: torch.Generator):
        model = networks["model"]
        x0 = render_video_batch(batch, self.frames, self.device, int(unwrap(model).config.resolution))
        b, t = x0.shape[:2]
        emb = self.encode(batch)
        keep = torch.rand(b, generator=generator, device=self.device) >= self.args.cfg_dropout
        emb = drop_condition(emb, keep)
        actions = batch["actions"].to(self.device)
        chunk = int(unwrap(model).config.chunk)
        causal = int(round(b * self.args.causal_fraction))
        # bidirectional clips: one sigma per clip; causal clips: one per chunk (Diffusion Forcing)
        sigma = self._sigma((b, 1), generator).expand(b, t).clone()
        if causal:
            per_chunk = self._sigma((causal, -(-t // chunk)), generator)
            sigma[:causal] = per_chunk.repeat_interleave(chunk, dim=1)[:, :t]
        noise = torch.randn(x0.shape, generator=generator, device=self.device)
        s = sigma.view(b, t, 1, 1, 1)
        x_sigma = (1 - s) * x0 + s * noise
        parts = []
        for rows, is_causal in ((slice(0, causal), True), (slice(causal, b), False)):
            if rows.stop > rows.start:
                parts.append(
                    model(x_sigma[rows], sigma[rows], emb.states[rows], emb.pooled[rows], actions[rows], causal=is_causal)
                )
        velocity = torch.cat(parts)
        loss = flow_matching_loss(velocity, x0, noise)
        return loss, {"loss": loss.detach(), "sigma_mean": sigma.mean().detach()}
