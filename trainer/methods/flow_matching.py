"""Flow matching (rectified flow) teacher with classifier-free-guidance dropout.

Lipman et al. 2023 / Liu et al. 2023; SD3 (Esser et al. 2024) timestep sampling:
    x_sigma = (1 - sigma) x0 + sigma eps,   L = E || v_theta(x_sigma, sigma, c) - (eps - x0) ||^2,
with sigma ~ logit-normal(m, s) and c replaced by the null condition with probability p_drop.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from engines.denoisers import unwrap
from engines.denoisers import velocity as denoiser_velocity
from engines.text_encoder import TextEmbedding, TextEncoder
from trainer.attention_maps import (
    grounding_losses,
    record_cross_attention,
    relation_order_loss,
    relation_targets,
    spec_coverage,
)
from trainer.config import ConfigError, TrainConfig, build
from trainer.image_task import render_batch
from trainer.methods.base import ImageMethod
from trainer.networks import add_unet_conditioning, build_network, load_network


@dataclass
class FlowMatchingConfig:
    cfg_dropout: float = 0.1
    logit_mean: float = 0.0
    logit_std: float = 1.0
    shift: float = 1.0  # sigma -> shift*sigma / (1 + (shift-1)*sigma): >1 trains more at high noise (SD3)
    # Not None: scenes whose caption relates two objects (the position category) draw their noise level around
    # this logit mean instead (1.5 puts the median sigma at 0.93 after shift 3). The sides of a position scene
    # are settled in the first sampling steps, above sigma 0.97 (scripts/probe_layout_by_step.py), and the
    # sampler's shift does not move them (scripts/probe_position_by_shift.py); the attention-map losses of
    # stages 5 and 5b were met in the maps, not in the image. This trains the image itself where it is laid out.
    relation_logit_mean: float | None = None
    # > 0: train a text refiner (engines/refined_unet.py) in front of a UNet's cross-attention, so
    # colours bind to their shapes and relations to their objects; added to init_from if it has none.
    text_refiner_layers: int = 0
    text_refiner_dim: int = 192
    text_refiner_heads: int = 3
    text_refiner_positions: int = 0  # > 0: the refiner learns an embedding of each token's index (word order)
    # > 0: add absolute position features (that many sinusoid frequencies per axis) after a UNet's
    # conv_in, so "left of" and "above" have something to attach to; added to init_from if it has none.
    position_frequencies: int = 0
    position_gain: float = 1.0  # scale of those features (engines/refined_unet.py: how fast they can grow)
    # > 0: ground cross-attention in each object's pixels (trainer/attention_maps.py, TokenCompose):
    # weights of the token loss (a phrase's attention falls inside its object) and of the pixel loss
    # (object pixels attend to their own phrase), added to the flow-matching loss. UNets only.
    attention_token_weight: float = 0.0
    attention_pixel_weight: float = 0.0
    # > 0: weight each image's grounding losses by sigma^power (normalised over the batch), so they act
    # where the layout is decided: at high noise the objects are not yet visible and only the caption
    # can say where each one goes; at low noise attention can simply find them in the image.
    attention_sigma_power: float = 0.0
    # > 0: on position scenes, a hinge on the order of the two phrases' attention centroids along the
    # caption's relation (trainer/attention_maps.py: relation_order_loss), weighted by
    # sigma^attention_order_sigma_power. Unlike the mask losses its target is fixed by the caption, so it
    # can be met at sigma ~ 1.
    attention_order_weight: float = 0.0
    attention_order_margin: float = 0.1  # the gap it asks for, as a fraction of the image side
    attention_order_sigma_power: float = 0.0  # its own sigma^power weighting (the mask losses keep theirs)


def flow_matching_loss(velocity: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Mean squared error to the straight-path velocity eps - x0. Shapes: (B, C, H, W) each -> scalar."""
    return torch.mean((velocity.float() - (noise - x0).float()) ** 2)


def shift_sigma(sigma: torch.Tensor, shift: float) -> torch.Tensor:
    """SD3's timestep shift. Flat-coloured scenes are decided at high noise (their x0 estimate is
    near exact by sigma 0.6), so the teacher trains and samples with shift 3."""
    return shift * sigma / (1 + (shift - 1) * sigma)


def drop_condition(emb: TextEmbedding, keep: torch.Tensor) -> TextEmbedding:
    """Zero the condition where keep is False (the null condition used by CFG). keep: (B,) bool."""
    k = keep.to(emb.states.dtype)
    return TextEmbedding(emb.states * k[:, None, None], emb.pooled * k[:, None], emb.mask & keep[:, None])


class FlowMatching(ImageMethod):
    """Roles: `model` (trained, EMA'd). No frozen roles. Trains teachers."""

    primary = "model"

    role = "teacher"

    def __init__(self, config: TrainConfig, device: torch.device, text_encoder: TextEncoder) -> None:
        self.config = config
        self.args: FlowMatchingConfig = build(FlowMatchingConfig, config.method_config, prefix="method_config.")
        self.device = device
        self.text_encoder = text_encoder
        network = build_network(config.model_preset) if config.init_from is None else load_network(config.init_from)
        a = self.args
        if a.text_refiner_layers or a.position_frequencies:
            network = add_unet_conditioning(
                network,
                a.text_refiner_layers,
                a.text_refiner_dim,
                a.text_refiner_heads,
                a.text_refiner_positions,
                a.position_frequencies,
                a.position_gain,
            )
        grounding = {
            "attention_token_weight": a.attention_token_weight,
            "attention_pixel_weight": a.attention_pixel_weight,
            "attention_sigma_power": a.attention_sigma_power,
            "attention_order_weight": a.attention_order_weight,
            "attention_order_margin": a.attention_order_margin,
            "attention_order_sigma_power": a.attention_order_sigma_power,
        }
        negative = {k: v for k, v in grounding.items() if v < 0}
        if negative:
            raise ConfigError(f"method_config {', '.join(negative)} must be >= 0, got {negative}")
        self.masked = bool(a.attention_token_weight or a.attention_pixel_weight)
        self.grounded = self.masked or a.attention_order_weight > 0
        if self.grounded and not any(getattr(m, "is_cross_attention", False) for m in network.modules()):
            raise ConfigError(
                f"attention grounding needs a network with cross-attention (a UNet); {type(network).__name__} has none"
            )
        self.networks = {"model": network}
        self.ema_roles = ("model",)

    def loss(
        self, phase: str, networks: dict, batch: dict, generator: torch.Generator
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if self.masked:
            x0, cover = render_batch(batch, self.resolution, self.device, coverage=True)
        else:
            x0 = render_batch(batch, self.resolution, self.device)
        b = x0.shape[0]
        emb = self.text_encoder.encode_tokens(batch["tokens"])
        keep = torch.rand(b, generator=generator, device=self.device) >= self.args.cfg_dropout
        emb = drop_condition(emb, keep)
        mean = self.args.logit_mean
        if self.args.relation_logit_mean is not None:
            related = relation_targets(batch["conditions"])[1].to(self.device) != 0  # sign 0: relates nothing
            mean = torch.where(related, self.args.relation_logit_mean, self.args.logit_mean)
        u = mean + self.args.logit_std * torch.randn(b, generator=generator, device=self.device)
        sigma = shift_sigma(torch.sigmoid(u), self.args.shift)
        noise = torch.randn(x0.shape, generator=generator, device=self.device)
        s = sigma.view(b, 1, 1, 1)
        x_sigma = (1 - s) * x0 + s * noise
        recording = record_cross_attention(unwrap(networks["model"])) if self.grounded else contextlib.nullcontext()
        with recording as maps:
            velocity = denoiser_velocity(networks["model"], x_sigma, sigma * 1000, emb)
        loss = flow_matching_loss(velocity, x0, noise)
        metrics = {"loss": loss.detach(), "sigma_mean": sigma.mean().detach()}
        if self.grounded:
            a = self.args
            weights = keep.float() * sigma.float() ** a.attention_sigma_power  # dropped captions: 0
            order_weights = keep.float() * sigma.float() ** a.attention_order_sigma_power
            phrase = batch["phrase_tokens"].to(self.device)
            metrics["flow_loss"] = loss.detach()
            if self.masked:
                cover = spec_coverage(cover, batch["object_specs"].to(self.device))
                token, pixel = grounding_losses(maps, phrase, cover, weights)
                metrics |= {"attention_token_loss": token.detach(), "attention_pixel_loss": pixel.detach()}
                loss = loss + a.attention_token_weight * token + a.attention_pixel_weight * pixel
            if a.attention_order_weight > 0:
                axis, sign = (t.to(self.device) for t in relation_targets(batch["conditions"]))
                order = relation_order_loss(maps, phrase, axis, sign, order_weights, a.attention_order_margin)
                metrics["attention_order_loss"] = order.detach()
                loss = loss + a.attention_order_weight * order
            metrics["loss"] = loss.detach()
        return loss, metrics
