"""Self-Forcing: a causal few-step video student trained on its own rollouts (Huang et al. 2025,
arXiv:2506.08009), with DMD (trainer/methods/dmd2.py) as the distribution-matching objective.

Teacher forcing trains a causal model on clean ground-truth context, then serves it on its own
imperfect frames, and the gap compounds into drift. Here every training clip is generated the way
it is served: chunk by chunk from noise, each chunk denoised in a few steps while attending to the
KV cache of the chunks the student itself made before. Gradients flow only through one randomly
chosen step of each chunk (earlier steps and the cache run without them), which keeps memory at
one forward per chunk. The whole rolled-out clip then gets the DMD gradient: at a random noise
level, the frozen bidirectional teacher with CFG gives the 'real' clean estimate, a critic (a copy
of the teacher trained by flow matching on the student's rollouts) the 'fake' one.

Step counts per chunk are drawn from `student_steps` each rollout (their trailing grids nest), so one
checkpoint serves 1, 2 or 4 steps per chunk, and any mix of them across chunks: Diagonal
Distillation's asymmetric schedule (more steps for the first chunks, fewer later) is an inference
choice measured by `bench video`, not a separate model.

Stage `ode_init` (Self-Forcing sec. 4, after CausVid): before DMD, make the causal student a few-step
sampler of the teacher's clips by regression. A fixed set of `ode_pairs` clips is drawn once by the
bidirectional teacher's ODE with CFG (`trainer/ode_pairs.py`); the student then walks each clip chunk
by chunk as it streams, the cache holding the teacher's frames (teacher forcing), and each chunk
regresses the teacher's frames at one of the k steps of its sampler: at the first step from the very
noise the teacher started from, at later ones from the teacher's frames re-noised to that step's
sigma, which is what the student's jump-and-renoise sampler feeds it. Export it, then run the DMD
stage with `init_from` that export.

Re-DMD (Reward Forcing, Lu et al. 2025, arXiv:2512.04678, sec. 3.3): distribution matching treats every rollout
alike, and a mode-seeking student settles on slow, static motion (ours moved 31 % of its "quickly" movers at a quick
pace against the teacher's clips; `scripts/probe_video_motion.py`). With `reward_beta` != 0 each rollout's DMD loss is
weighted by exp(beta * r) / mean(exp(beta * r)), r = the motion world's judge on the rollout (the mean of its
`reward_categories` verdicts, `motion.motion_rewards`), judged in `reward_workers` processes. The paper rates
dynamics with a vision-language model; our judge reads the stated direction and speed directly.

DMD's regression loss (`regression_weight` > 0; Yin et al. 2023, sec. 3.3) against mode collapse: every student
step in the DMD stage also takes the ODE stage's loss on the fixed teacher clips (the same pair set, made once).
Why: both shipped Self-Forcing students draw one object where captions name two or three (95-100 % of such
validation clips; the teacher draws them), merging the others' attributes into it: DMD's mode seeking, with no
pull towards the teacher's actual samples.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from engines.denoisers import unwrap
from engines.samplers import cfg_velocity, sampler_sigmas
from engines.text_encoder import TextEmbedding, TextEncoder
from engines.video_sampling import clip_velocity
from trainer import distill
from trainer.config import ConfigError, TrainConfig, build
from trainer.image_task import new_scheduler
from trainer.judge_pool import JudgePool
from trainer.methods.flow_matching import flow_matching_loss
from trainer.methods.video_fm import video_network
from trainer.ode_pairs import PairSet, run_pair_set
from trainer.video_task import VideoMethod, to_uint8_frames
from trainer.worlds import motion

STAGES = ("dmd", "ode_init")


@dataclass
class SelfForcingConfig(distill.CriticDistillConfig):
    frames: int = 16  # frames per rolled-out training clip
    interactive_fraction: float = 0.25
    # KV window during rollouts, in frames: shorter than the clip, so training rollouts evict frames
    # into the EMA sink as endless streams do (with the served window, 16 frames would never evict)
    train_window: int = 8
    stage: str = "dmd"  # dmd: Self-Forcing proper | ode_init: regress the teacher's ODE clips first (see above)
    ode_pairs: int = 2048  # ode_init / regression: teacher clips in the fixed set (<run_dir>/ode-pairs.safetensors)
    ode_pair_steps: int = 16  # ode_init / regression: Euler steps of the teacher's whole-clip ODE, at the real score's CFG
    # Re-DMD (reward_beta != 0): the judge's categories averaged into each rollout's reward
    reward_categories: list[str] = field(default_factory=lambda: list(motion.REWARD_CATEGORIES))

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.frames < 1 or not 0 <= self.interactive_fraction <= 1:
            raise ConfigError("method_config needs frames >= 1 and 0 <= interactive_fraction <= 1")
        if self.train_window < 1:
            raise ConfigError("method_config.train_window must be >= 1 frame")
        if self.stage not in STAGES:
            raise ConfigError(f"method_config.stage must be one of {', '.join(STAGES)}, got {self.stage!r}")
        known = (*motion.CATEGORIES, "overall")
        if not self.reward_categories or not set(self.reward_categories) <= set(known):
            raise ConfigError(f"method_config.reward_categories must be among {', '.join(known)}, got {self.reward_categories!r}")
        if self.ode_pairs < 1 or self.ode_pair_steps < 1:
            raise ConfigError(
                f"method_config needs ode_pairs >= 1 and ode_pair_steps >= 1, got {self.ode_pairs} and {self.ode_pair_steps}"
            )


class SelfForcing(VideoMethod):
    """Roles: `generator` (the causal student: trained, EMA'd, exported), `critic` (trained).
    Frozen: the bidirectional teacher."""

    primary = "generator"
    role = "student"
    streaming = True
    stochastic_sampling = True
    export_overrides = {"default_guidance": 1.0}  # the teacher's CFG is distilled in

    def __init__(self, config: TrainConfig, device: torch.device, text_encoder: TextEncoder) -> None:
        self.config, self.device, self.text_encoder = config, device, text_encoder
        self.args: SelfForcingConfig = build(SelfForcingConfig, config.method_config, prefix="method_config.")
        self.frames, self.interactive_fraction = self.args.frames, self.args.interactive_fraction
        self.teacher = distill.load_teacher(config.teacher, device, config.method, modality="video")
        self.teacher_id = self.teacher.id
        guidance = self.args.teacher_guidance
        self.guidance = guidance if guidance is not None else (self.teacher.card.default_guidance or 1.0)
        # the student starts from init_from or the teacher; the critic (fake score) from the teacher
        start = config.init_from or config.teacher
        self.networks = {"generator": video_network(config, start)}
        if self.args.stage == "dmd":
            self.networks["critic"] = video_network(config, config.teacher)
            self.lr_scales = {"critic": self.args.critic_lr_scale}
        self.ema_roles = ("generator",)
        scheduler = new_scheduler(config.export.scheduler_shift, stochastic=True)
        self.grids = {k: torch.cat([sampler_sigmas(scheduler, k), torch.zeros(1)]) for k in self.args.student_steps}
        self.judge = JudgePool(self.args.reward_workers if self.args.rewarded else 0)
        self.pairs: PairSet | None = None
        if self.args.stage == "ode_init" or self.args.regression_weight > 0:
            self.pairs = run_pair_set(
                config,
                self.teacher,
                text_encoder,
                device,
                steps=self.args.ode_pair_steps,
                guidance=self.guidance,
                count=self.args.ode_pairs,
                frames=self.frames,
                interactive_fraction=self.interactive_fraction,
            )

    def phases(self, step: int) -> list[str]:
        if self.args.stage == "ode_init":
            return ["generator"]
        return ["generator", "critic"] if step % self.args.critic_updates == 0 else ["critic"]

    def rollout(self, generator_net, emb: TextEmbedding, actions: torch.Tensor, rng: torch.Generator, grad: bool):
        """The student's own clip (B, frames, 3, H, W), made chunk by chunk as it is served: each chunk
        from fresh noise in k steps (k drawn per rollout), attending to the cache of its earlier chunks.
        With `grad`, gradients flow through one random step per chunk; the cache is always detached."""
        model = unwrap(generator_net)
        chunk, res, channels = int(model.config.chunk), int(model.config.resolution), int(model.config.in_channels)
        b = emb.states.shape[0]
        k = distill.pick(self.args.student_steps, rng)
        grid = self.grids[k].to(self.device)
        cache = model.new_cache(b, window=max(self.args.train_window, chunk))
        out = []
        for start in range(0, self.frames, chunk):
            count = min(chunk, self.frames - start)
            acts = actions[:, start : start + count]
            x = torch.randn((b, count, channels, res, res), generator=rng, device=self.device)
            exit_step = distill.pick(list(range(k)), rng)
            for i in range(exit_step + 1):
                sigma = grid[i].expand(b, count)
                with torch.set_grad_enabled(grad and i == exit_step):
                    v = generator_net(x, sigma, emb.states, emb.pooled, acts, cache=cache, frame_index=start)
                    x0 = x - grid[i] * v
                if i < exit_step:
                    fresh = torch.randn(x.shape, generator=rng, device=self.device)
                    x = distill.add_noise(x0.detach(), fresh, grid[i + 1].expand(b))
            with torch.no_grad():
                model.commit_chunk(x0.detach(), emb.states, emb.pooled, acts, cache, start)
            out.append(x0)
        return torch.cat(out, dim=1)

    def rewards(self, clip: torch.Tensor, clips: list) -> torch.Tensor:
        """(B,) Re-DMD rewards of rolled-out clips (B, T, 3, H, W) in [-1, 1] against their world clips."""
        frames = to_uint8_frames(clip, motion.RESOLUTION)
        rewards = self.judge(motion.motion_rewards, frames, clips, tuple(self.args.reward_categories))
        return torch.as_tensor(rewards, dtype=torch.float32, device=self.device)

    def ode_loss(self, generator_net, b: int, rng: torch.Generator) -> torch.Tensor:
        """Stage ode_init: b teacher clips walked chunk by chunk with the teacher's frames in the cache; each
        chunk regresses its frames from one random step of a random k-step sampler (0.5 mean squared error)."""
        model = unwrap(generator_net)
        chunk = int(model.config.chunk)
        pairs = self.pairs.batch(self.pairs.draw(b, rng), self.device)
        emb = self.text_encoder.encode_tokens(pairs["tokens"])
        noise, target, actions = pairs["noise"], pairs["samples"], pairs["actions"]
        grid = self.grids[distill.pick(self.args.student_steps, rng)].to(self.device)
        cache = model.new_cache(b, window=max(self.args.train_window, chunk))
        errors = []
        for start in range(0, self.frames, chunk):
            frames = slice(start, min(start + chunk, self.frames))
            clean, acts = target[:, frames], actions[:, frames]
            i = distill.pick(list(range(len(grid) - 1)), rng)
            fresh = torch.randn(clean.shape, generator=rng, device=self.device)
            x = noise[:, frames] if i == 0 else distill.add_noise(clean, fresh, grid[i].expand(b))
            sigma = grid[i].expand(b, clean.shape[1])
            v = generator_net(x, sigma, emb.states, emb.pooled, acts, cache=cache, frame_index=start)
            errors.append(((x - grid[i] * v).float() - clean) ** 2)
            with torch.no_grad():
                model.commit_chunk(clean, emb.states, emb.pooled, acts, cache, start)
        return 0.5 * torch.cat(errors, dim=1).mean()

    def loss(self, phase: str, networks: dict, batch: dict, rng: torch.Generator):
        if self.args.stage == "ode_init":
            loss = self.ode_loss(networks["generator"], batch["tokens"]["input_ids"].shape[0], rng)
            return loss, {"loss/ode": loss.detach()}
        emb = self.encode(batch)
        actions = batch["actions"].to(self.device)
        b = emb.states.shape[0]
        critic = clip_velocity(networks["critic"], actions, causal=False)
        if phase == "generator":
            clip = self.rollout(networks["generator"], emb, actions, rng, grad=True)
            t = distill.dmd_noise_level(self.args, b, rng, self.device)
            x_t = distill.add_noise(clip.detach(), torch.randn(clip.shape, generator=rng, device=self.device), t)
            with torch.no_grad():
                null = self.text_encoder.null(b)
                teacher = clip_velocity(self.teacher.network, actions, causal=False)
                v_real = cfg_velocity(teacher, x_t, t * 1000, emb, null, self.guidance)[0]
                real = x_t - t.view(-1, 1, 1, 1, 1) * v_real
                fake = x_t - t.view(-1, 1, 1, 1, 1) * critic(x_t, t * 1000, emb)
                grad = distill.dmd_gradient(clip.detach(), real, fake)
            per_clip = 0.5 * ((clip.float() - (clip - grad).detach().float()) ** 2).mean(dim=(1, 2, 3, 4))
            rewards = self.rewards(clip.detach(), batch["clips"]) if self.args.rewarded else None
            dmd = distill.reward_weighted(per_clip, rewards, self.args.reward_beta)
            metrics = {"loss/dmd": dmd.detach()} | ({} if rewards is None else {"reward": rewards.mean()})
            loss = dmd
            if self.pairs is not None:  # DMD's regression loss: the ODE stage's walk of the teacher's clips, as a term
                regression = self.ode_loss(networks["generator"], b, rng)
                loss = loss + self.args.regression_weight * regression
                metrics["loss/regression"] = regression.detach()
            return loss, metrics
        # critic: flow matching on the student's (detached) rollouts
        with torch.no_grad():
            clip = self.rollout(networks["generator"], emb, actions, rng, grad=False)
        sigma = torch.sigmoid(torch.randn(b, generator=rng, device=self.device))
        noise = torch.randn(clip.shape, generator=rng, device=self.device)
        v = critic(distill.add_noise(clip, noise, sigma), sigma * 1000, emb)
        loss = flow_matching_loss(v, clip, noise)
        return loss, {"loss/critic": loss.detach()}
