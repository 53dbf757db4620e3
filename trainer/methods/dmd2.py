"""DMD2: distribution matching distillation, improved (Yin et al. 2024, arXiv:2405.14867).

A few-step generator G (initialised from the teacher) is trained so that its samples' distribution
matches the teacher's. At a random noise level t, the frozen teacher with CFG gives the 'real'
clean-image estimate and a critic (the 'fake score', a copy of the teacher trained by flow
matching on G's own samples) gives the 'fake' one; their difference, normalised per sample, is
the gradient of the KL divergence with respect to G's output (DMD, Yin et al. 2023, eq. 7):

    grad = (x0_fake(x_t) - x0_real(x_t)) / mean|x0 - x0_real|,   L_G = 0.5 || x0 - sg(x0 - grad) ||^2

Two time-scale updates: the critic steps every iteration, G every `critic_updates`-th, so the
critic tracks G's moving distribution. No regression loss. Optional GAN head on the critic's
bottleneck features, trained to tell noised world renders (real data) from noised G samples.
Multi-step students use backward simulation: G's input at step j of its k-step sampler is made by
running G's own sampler for j steps (trailing grids for k in `student_steps` nest, so one
checkpoint serves 1, 2 and 4 steps).

Reward-weighted DMD (after Stream-R1 / Re-DMD): with `reward_beta` != 0, each sample's DMD loss is
weighted by exp(beta * r) / mean(exp(beta * r)), r = 1 when the world's judge accepts the sample. Beta > 0 is the
papers' weighting: accepted samples lead. Beta < 0 gives the samples the judge rejects the larger share of the
gradient, on the reading that a student of limited capacity spends it where the weights are: session 25's beta 2
read 0.700 at one step against 0.730 without it (-0.029 ± 0.021 paired, so not yet a result either way;
`bench/results/device/pool16-reward-h100/`).

The projection loss, optional (`projection_weight` > 0; session 26): the world's detector reads each generator
sample, `shapes.corrected_scene` redraws what it found in place with the caption's named shapes, colours and sizes,
and G is pulled towards that render by 0.5 mean squared distance. It is the judge's own reading turned into a
target that only a clean drawing of the asked scene meets: a loss on a classifier of the judge's labels is met by
noise patterns instead (scripts/probe_judge_proxy.py). On the shipped student's 560 CPU images, 91 % of samples have
a target and 63 % of the rejected ones among them would pass as their target (scripts/probe_projection.py ceiling);
followed alone for 20-30 CPU steps it did not raise the judge (-0.031 ± 0.026, `follow`; rejected images only,
`projection_rejected_only`: -0.045 ± 0.024), so it awaits its GPU stage with DMD, the GAN and the EMA.

DMD's regression loss (Yin et al. 2023, sec. 3.3), optional: with `regression_weight` > 0, a fixed
set of `regression_pairs` (noise z, teacher ODE sample y) pairs is made once (`trainer/ode_pairs.py`)
and every generator step also pulls G's one-step output from z towards y:
L_reg = 0.5 mean (G(z, 1) - y)^2, the same form as the DMD loss above, so `regression_weight` compares
the two pulls directly. Distribution matching is mode-seeking and lets go of what captions leave free
(DMD2 students draw fewer colours than the teacher, `free_colour_bits`); the pairs tie the one-step
map to the teacher's modes. The paper uses LPIPS; there is no LPIPS network offline, and a distance
in the FD feature network's space would train on the metric, so the distance is on pixels, or with
`regression_pool` p on p x p block means, which hold layout, sizes and colours but not edges. All step
counts share the first step (every grid starts at sigma 1), so multi-step students get it too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from engines.denoisers import unwrap, velocity
from engines.samplers import sampler_sigmas
from engines.text_encoder import TextEmbedding, TextEncoder
from trainer import distill
from trainer.config import ConfigError, TrainConfig
from trainer.image_task import new_scheduler, render_batch
from trainer.judge_pool import JudgePool
from trainer.methods.base import DistillationMethod
from trainer.methods.flow_matching import flow_matching_loss
from trainer.ode_pairs import PairSet, run_pair_set
from trainer.worlds import shapes


@dataclass
class DMD2Config(distill.CriticDistillConfig):
    gan_generator_weight: float = 0.0  # 0 turns the GAN head off
    gan_critic_weight: float = 0.0
    # blocks of the critic whose outputs feed one GAN head each (dotted module paths, e.g. "up_blocks.1");
    # empty: the bottleneck (a UNet's mid_block, a transformer's middle block)
    gan_taps: list[str] = field(default_factory=list)
    gan_sigma_max: float | None = None  # GAN noise levels uniform in [sigma_min, this]; None: DMD's levels
    # the GAN loss per location of each head's feature map (PatchGAN) instead of per image. Session 25: one-step
    # students leave 11-16 % of small objects shapeless against 2-5 % of larger ones; an image logit averages a small
    # ghost with the rest of the picture before the loss, a patch logit keeps its gradient where the ghost is
    gan_patch: bool = False
    regression_pairs: int = 4096  # pairs in the fixed set (made once, kept in <run_dir>/ode-pairs.safetensors)
    regression_pair_steps: int = 25  # Euler steps of the teacher ODE that makes them, at the real score's CFG
    # the regression distance on p x p block means: 1 is pixels. A one-step map regressed onto its teacher's endpoints
    # averages them, and a pixel distance pays for that with ghosted edges (session 24: the pairs kept sizes but
    # undid the GAN's shapes); block means keep the layout, sizes and colours and leave edges to DMD and the GAN
    regression_pool: int = 1
    # the projection loss (session 26): 0.5 mean squared distance of each generator sample to the render of its
    # `shapes.corrected_scene` (the world's detector reads the sample; its objects are redrawn in place with the
    # caption's named shapes, colours and sizes), at this weight; samples whose object count is off have no target.
    # Detection runs on `reward_workers` CPU processes. 0 = off
    projection_weight: float = 0.0
    # only the samples the judge rejects are pulled (the CPU probe: pulling every sample spends the loss on sharpening
    # objects already read right, and did not raise the judge)
    projection_rejected_only: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if min(self.gan_generator_weight, self.gan_critic_weight) < 0:
            raise ConfigError("GAN weights must be >= 0")
        if self.gan_sigma_max is not None and not self.sigma_min < self.gan_sigma_max <= 1:
            raise ConfigError(f"method_config.gan_sigma_max must be in (sigma_min={self.sigma_min}, 1], got {self.gan_sigma_max}")
        if self.gan_patch and max(self.gan_generator_weight, self.gan_critic_weight) == 0:
            raise ConfigError("method_config.gan_patch needs the GAN on: set gan_generator_weight and gan_critic_weight > 0")
        if any(not isinstance(tap, str) or not tap for tap in self.gan_taps):
            raise ConfigError(f"method_config.gan_taps must be a list of module paths, got {self.gan_taps!r}")
        if isinstance(self.regression_pool, bool) or not isinstance(self.regression_pool, int) or self.regression_pool < 1:
            raise ConfigError(f"method_config.regression_pool must be an integer >= 1 (1: pixels), got {self.regression_pool!r}")
        if not math.isfinite(self.projection_weight) or self.projection_weight < 0:
            raise ConfigError(f"method_config.projection_weight must be a finite number >= 0, got {self.projection_weight}")
        if self.projection_rejected_only and self.projection_weight == 0:
            raise ConfigError("method_config.projection_rejected_only needs the projection on: set projection_weight > 0")
        if self.regression_pairs < 1 or self.regression_pair_steps < 1:
            raise ConfigError(
                f"method_config needs regression_pairs >= 1 and regression_pair_steps >= 1, got "
                f"{self.regression_pairs} and {self.regression_pair_steps}"
            )


def regression_loss(one_step: torch.Tensor, teacher_images: torch.Tensor, pool: int = 1) -> torch.Tensor:
    """DMD's regression term: 0.5 mean squared distance of G's one-step images to the teacher's from the same noise,
    on `pool` x `pool` block means (1: on pixels)."""
    a, b = one_step.float(), teacher_images.float()
    if pool > 1:
        a, b = F.avg_pool2d(a, pool), F.avg_pool2d(b, pool)
    return 0.5 * ((a - b) ** 2).mean()


def projection_loss(
    x0: torch.Tensor, conditions: list, judge: JudgePool | None = None, rejected_only: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, share of samples with a target): 0.5 mean squared distance of each sample (B, 3, H, W) in [-1, 1] to
    the render of its corrected scene (`shapes.projected_targets`, run by `judge`'s workers, or in this process),
    averaged over the whole batch with 0 for samples without one, so the weight means the same whatever the share.
    `rejected_only`: samples the judge accepts have no target."""
    images = shapes.to_uint8((x0.detach().float().clamp(-1, 1) + 1) / 2)
    projected = (judge or JudgePool(0))(shapes.projected_targets, images, conditions, rejected_only)
    valid = torch.as_tensor(projected["valid"], device=x0.device)
    targets = torch.as_tensor(projected["target"], device=x0.device).permute(0, 3, 1, 2).float() / 127.5 - 1
    if targets.shape[-1] != x0.shape[-1]:  # the world renders at 64 px; a student of another size is pulled at its own
        targets = F.interpolate(targets, size=x0.shape[-2:], mode="area")
    per_sample = 0.5 * ((x0.float() - targets) ** 2).mean(dim=(1, 2, 3))
    return (per_sample * valid).mean(), valid.float().mean()


class GANHead(torch.nn.Module):
    """Real/fake logit from a critic block's features: (B, C, H, W) or tokens (B, N, C). One logit per image (the
    linear read-out of the features' spatial mean), or with `patch` one per location of the head's feature map,
    (B, L), from the same weights: the read-out is linear, so the image logit is exactly the patch logits' mean."""

    def __init__(self, channels: int, patch: bool = False) -> None:
        super().__init__()
        self.patch = patch
        self.net = torch.nn.Sequential(
            torch.nn.Conv2d(channels, channels, 3, padding=1),
            torch.nn.GroupNorm(min(32, channels), channels),
            torch.nn.SiLU(),
            torch.nn.Conv2d(channels, channels, 4, stride=2, padding=1),
            torch.nn.SiLU(),
        )
        self.out = torch.nn.Linear(channels, 1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if features.dim() == 3:  # transformer tokens -> a square grid
            b, n, c = features.shape
            side = int(round(n**0.5))
            features = features.transpose(1, 2).reshape(b, c, side, side)
        mapped = self.net(features)
        if self.patch:
            return self.out(mapped.flatten(2).transpose(1, 2)).squeeze(-1)
        return self.out(mapped.mean(dim=(2, 3))).squeeze(1)


def gan_loss(logits: list[torch.Tensor], real: bool) -> torch.Tensor:
    """Non-saturating GAN loss, softplus(-l) for real and softplus(l) for fake, averaged over each head's logits
    (per image, or per patch: a locally fake region then keeps its own gradient rather than being averaged with
    the rest of the image first), then over heads."""
    sign = -1.0 if real else 1.0
    return torch.stack([F.softplus(sign * head).mean() for head in logits]).mean()


def _tap_channels(module: torch.nn.Module) -> int:
    """Output channels of a critic block: its last conv's or linear's (a block's output width)."""
    for layer in reversed(list(module.modules())):
        if isinstance(layer, torch.nn.Conv2d):
            return int(layer.out_channels)
        if isinstance(layer, torch.nn.Linear):
            return int(layer.out_features)
    raise ConfigError(f"GAN tap {type(module).__name__} has no conv or linear layer to read its width from")


class Critic(torch.nn.Module):
    """The fake score (a denoiser) plus GAN heads reading some of its blocks through forward hooks."""

    def __init__(self, denoiser: torch.nn.Module, gan: bool, taps: list[str] | None = None, patch: bool = False) -> None:
        super().__init__()
        self.denoiser = denoiser
        inner = unwrap(denoiser)
        if not taps:  # the bottleneck: a UNet's mid block, a transformer's middle block (its image tokens)
            taps = ["mid_block"] if hasattr(inner, "mid_block") else [f"transformer_blocks.{len(inner.transformer_blocks) // 2}"]
        modules = []
        for path in taps:
            try:
                modules.append(inner.get_submodule(path))
            except AttributeError as err:
                raise ConfigError(f"method_config.gan_taps: the critic has no block {path!r} ({err})") from None
        widths = [_tap_channels(module) for module in modules]
        # the first head keeps the key `head` that the single bottleneck head had (earlier runs resume exactly)
        self.head = GANHead(widths[0], patch) if gan else None
        self.extra_heads = torch.nn.ModuleList(GANHead(w, patch) for w in widths[1:]) if gan else None
        self._features: list[torch.Tensor | None] = [None] * len(modules)
        if gan:
            for index, module in enumerate(modules):
                module.register_forward_hook(self._keeper(index))

    def _keeper(self, index: int):
        def keep(_module, _inputs, output) -> None:
            self._features[index] = output[1] if isinstance(output, tuple) else output

        return keep

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, states, pooled, mask, classify: bool = False):
        """(velocity, logits): when `classify`, one tensor of real/fake logits per GAN head, (B,) or per patch
        (B, L), L the head's own map size."""
        v = velocity(self.denoiser, x, sigma * 1000, TextEmbedding(states, pooled, mask))
        if not classify:
            return v, None
        heads = [self.head, *self.extra_heads]
        return v, [head(f.float()) for head, f in zip(heads, self._features, strict=True)]


class DMD2(DistillationMethod):
    """Roles: `generator` (trained, EMA'd, exported), `critic` (trained). Frozen: the teacher."""

    primary = "generator"
    stochastic_sampling = True
    export_overrides = {"default_guidance": 1.0}  # the teacher's CFG is distilled in

    def __init__(self, config: TrainConfig, device: torch.device, text_encoder: TextEncoder) -> None:
        self._init_distillation(config, device, text_encoder, DMD2Config)
        self.args: DMD2Config
        from trainer.networks import load_network

        start = config.init_from or config.teacher
        gan = self.args.gan_generator_weight > 0 or self.args.gan_critic_weight > 0
        critic = Critic(load_network(config.teacher), gan, self.args.gan_taps, self.args.gan_patch)
        self.networks = {"generator": load_network(start), "critic": critic}
        if self.resolution % self.args.regression_pool:
            raise ConfigError(
                f"method_config.regression_pool {self.args.regression_pool} does not divide the {self.resolution}-px "
                f"images into whole blocks"
            )
        self.ema_roles = ("generator",)
        self.lr_scales = {"critic": self.args.critic_lr_scale}
        scheduler = new_scheduler(config.export.scheduler_shift, stochastic=True)
        self.grids = {k: torch.cat([sampler_sigmas(scheduler, k), torch.zeros(1)]) for k in self.args.student_steps}
        judged = self.args.rewarded or self.args.projection_weight > 0
        self.judge = JudgePool(self.args.reward_workers if judged else 0)
        self.pairs: PairSet | None = None
        if self.args.regression_weight > 0:
            count, steps, guidance = self.args.regression_pairs, self.args.regression_pair_steps, self.guidance
            self.pairs = run_pair_set(config, self.teacher, text_encoder, device, steps=steps, guidance=guidance, count=count)
        if config.compile:
            self.teacher.network = torch.compile(self.teacher.network)

    def phases(self, step: int) -> list[str]:
        return ["generator", "critic"] if step % self.args.critic_updates == 0 else ["critic"]

    def _student_input(self, generator_net, emb: TextEmbedding, shape, rng: torch.Generator):
        """(x, sigma): G's input at a random step of a random k-step sampler (backward simulation, no gradients)."""
        k = distill.pick(self.args.student_steps, rng)
        stop = distill.pick(list(range(k)), rng)
        noise = torch.randn(shape, generator=rng, device=self.device)
        return distill.simulate_student(generator_net, noise, emb, self.grids[k], stop, rng)

    def _student_sample(self, generator_net, emb: TextEmbedding, shape, rng: torch.Generator) -> torch.Tensor:
        """G's clean image at a random step of a random k-step sampler, without gradients (the critic's data)."""
        x, sigma = self._student_input(generator_net, emb, shape, rng)
        with torch.no_grad():
            return distill.predict_x0(generator_net, x, sigma, emb)

    def _pair_batch(self, b: int, rng: torch.Generator) -> tuple[torch.Tensor, TextEmbedding, torch.Tensor]:
        """(noise, caption embedding, teacher image) of b regression pairs drawn from the fixed set."""
        pairs = self.pairs.batch(self.pairs.draw(b, rng), self.device)
        return pairs["noise"], self.text_encoder.encode_tokens(pairs["tokens"]), pairs["samples"]

    def loss(self, phase: str, networks: dict, batch: dict, rng: torch.Generator):
        emb = self.text_encoder.encode_tokens(batch["tokens"])
        b, r = emb.states.shape[0], self.resolution
        shape = (b, 3, r, r)
        critic = networks["critic"]
        if phase == "generator":
            generator = networks["generator"]
            x, sigma = self._student_input(generator, emb, shape, rng)
            if self.pairs is None:
                x0 = distill.predict_x0(generator, x, sigma, emb)
            else:  # the pairs' one-step images ride in the same forward: one DDP forward per backward
                z, pair_emb, pair_images = self._pair_batch(b, rng)
                inputs, sigmas = torch.cat([x, z]), torch.cat([sigma, torch.ones_like(sigma)])
                both = distill.predict_x0(generator, inputs, sigmas, TextEmbedding.cat(emb, pair_emb))
                x0, one_step = both[:b], both[b:]
            t = distill.dmd_noise_level(self.args, b, rng, self.device)
            noise = torch.randn(shape, generator=rng, device=self.device)
            x_t = distill.add_noise(x0, noise, t)
            with torch.no_grad():
                null = self.text_encoder.null(b)
                real = distill.guided_x0(self.teacher.network, x_t.detach(), t, emb, null, self.guidance)
                v_fake, _ = critic(x_t.detach(), t, emb.states, emb.pooled, emb.mask)
                fake = x_t.detach() - t.view(-1, 1, 1, 1) * v_fake
                grad = distill.dmd_gradient(x0.detach(), real, fake)
                rewards = self._rewards(x0.detach(), batch["conditions"]) if self.args.rewarded else None
            per_sample = 0.5 * ((x0.float() - (x0 - grad).detach().float()) ** 2).mean(dim=(1, 2, 3))
            dmd = distill.reward_weighted(per_sample, rewards, self.args.reward_beta)
            metrics = {} if rewards is None else {"reward": rewards.mean()}
            loss = dmd
            metrics["loss/dmd"] = dmd.detach()
            if self.args.gan_generator_weight > 0:
                x_gan, t_gan = x_t, t
                if self.args.gan_sigma_max is not None:  # the GAN's own, lower noise levels
                    t_gan = self._gan_noise_level(b, rng)
                    x_gan = distill.add_noise(x0, torch.randn(shape, generator=rng, device=self.device), t_gan)
                _, logits = critic(x_gan, t_gan, emb.states, emb.pooled, emb.mask, classify=True)
                gan = gan_loss(logits, real=True)
                loss = loss + self.args.gan_generator_weight * gan
                metrics["loss/gan_generator"] = gan.detach()
            if self.args.projection_weight > 0:
                projection, valid = projection_loss(x0, batch["conditions"], self.judge, self.args.projection_rejected_only)
                loss = loss + self.args.projection_weight * projection
                metrics["loss/projection"], metrics["projection_valid"] = projection.detach(), valid
            if self.pairs is not None:
                regression = regression_loss(one_step, pair_images, self.args.regression_pool)
                loss = loss + self.args.regression_weight * regression
                metrics["loss/regression"] = regression.detach()
            return loss, metrics

        # critic: flow matching on G's (detached) samples, plus the GAN real/fake loss
        x0 = self._student_sample(networks["generator"], emb, shape, rng)
        sigma = torch.sigmoid(torch.randn(b, generator=rng, device=self.device))
        noise = torch.randn(shape, generator=rng, device=self.device)
        v, _ = critic(distill.add_noise(x0, noise, sigma), sigma, emb.states, emb.pooled, emb.mask)
        loss = flow_matching_loss(v, x0, noise)
        metrics = {"loss/critic": loss.detach()}
        if self.args.gan_critic_weight > 0:
            t = self._gan_noise_level(b, rng)
            real = render_batch(batch, r, self.device)
            both = torch.cat([real, x0])
            t2, noise2 = torch.cat([t, t]), torch.randn(both.shape, generator=rng, device=self.device)
            states, pooled, mask = (torch.cat([a, a]) for a in (emb.states, emb.pooled, emb.mask))
            _, logits = critic(distill.add_noise(both, noise2, t2), t2, states, pooled, mask, classify=True)
            gan = gan_loss([head[:b] for head in logits], real=True) + gan_loss([head[b:] for head in logits], real=False)
            loss = loss + self.args.gan_critic_weight * gan
            metrics["loss/gan_critic"] = gan.detach()
        return loss, metrics

    def _gan_noise_level(self, b: int, rng: torch.Generator) -> torch.Tensor:
        """(b,) noise levels of the GAN's real and fake images: DMD's, or uniform up to `gan_sigma_max`."""
        if self.args.gan_sigma_max is None:
            return distill.dmd_noise_level(self.args, b, rng, self.device)
        low, high = self.args.sigma_min, self.args.gan_sigma_max
        return low + (high - low) * torch.rand(b, generator=rng, device=self.device)

    def _rewards(self, x0: torch.Tensor, conditions: list) -> torch.Tensor:
        """1 where the world's judge accepts a sample for its caption, else 0 (judged on the CPU, in
        `reward_workers` processes)."""
        images = shapes.to_uint8((x0.float().clamp(-1, 1) + 1) / 2)
        return torch.as_tensor(self.judge(shapes.judge_rewards, images, conditions), device=self.device)
