"""What every video method shares: motion-world batches (made in data-loader workers, rendered on
the training device), judged evaluation, frame-strip previews and the export of a finished network.

A clip is (B, T, 3, H, W) in [-1, 1]. The teacher samples whole clips; a causal student is
evaluated the way it is served, chunk by chunk through its KV cache (engines/video_sampling.py).
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from engines.text_encoder import TextEmbedding, TextEncoder
from engines.video import VIDEO_FOLDER
from engines.video_sampling import sample_clips, stream_chunks
from trainer.image_task import DTYPES, new_scheduler, write_model_card
from trainer.methods.base import ExportedMethod
from trainer.worlds import motion


def video_batch_cpu(
    step: int,
    rank: int,
    micro: int,
    *,
    seed: int,
    batch_size: int,
    frames: int,
    interactive_fraction: float,
    tokenizer=None,
    max_tokens: int = 40,
) -> dict:
    """The CPU half of a batch, fixed by (seed, rank, step, micro): clips, captions, per-frame
    action ids and tokens. The clips travel to the main process, which renders them on the GPU."""
    from trainer.worlds.shapes import step_rng

    rng = step_rng(seed, rank, step * 1000 + micro)
    clips = motion.train_batch(rng, batch_size, frames, interactive_fraction=interactive_fraction)
    batch = {
        "clips": clips,
        "captions": [c.caption for c in clips],
        "actions": torch.stack([motion.action_ids(c, frames) for c in clips]),
    }
    if tokenizer is not None:
        batch["tokens"] = dict(
            tokenizer(batch["captions"], padding="max_length", truncation=True, max_length=max_tokens, return_tensors="pt")
        )
    return batch


def render_video_batch(batch: dict, frames: int, device: torch.device, resolution: int = motion.RESOLUTION) -> torch.Tensor:
    """The GPU half: (B, T, 3, resolution, resolution) in [-1, 1] (area-downsampled for small test networks)."""
    clips = motion.render_clips(batch["clips"], frames, device=device)
    if resolution != clips.shape[-1]:
        b, t = clips.shape[:2]
        clips = torch.nn.functional.interpolate(clips.flatten(0, 1), size=(resolution, resolution), mode="area")
        clips = clips.view(b, t, 3, resolution, resolution)
    return clips * 2 - 1


def to_uint8_frames(clips: torch.Tensor, resolution: int | None = None) -> np.ndarray:
    """(B, T, 3, H, W) in [-1, 1] -> (B, T, H, W, 3) uint8, what the judge reads; `resolution`
    resizes (nearest) first, e.g. a small test network's frames to the judge's 64x64."""
    if resolution is not None and clips.shape[-1] != resolution:
        b, t = clips.shape[:2]
        clips = torch.nn.functional.interpolate(clips.flatten(0, 1).float(), size=(resolution, resolution), mode="nearest")
        clips = clips.view(b, t, 3, resolution, resolution)
    array = ((clips.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return array.permute(0, 1, 3, 4, 2).cpu().numpy()


@torch.no_grad()
def sample_for_clips(
    model,
    text_encoder: TextEncoder,
    clips: list,
    frames: int,
    steps: int,
    guidance: float,
    scheduler,
    streaming: bool,
    seeds: list[int] | None = None,
    batch_size: int = 32,
) -> torch.Tensor:
    """Generated clips (B, frames, 3, H, W) for the captions and actions of world clips.
    `streaming`: chunk by chunk through the KV cache (a causal model, as served); else whole clips.
    `guidance` > 1 applies CFG in either mode."""
    device = next(model.parameters()).device
    seeds = list(range(len(clips))) if seeds is None else seeds
    out = []
    for i in range(0, len(clips), batch_size):
        part = clips[i : i + batch_size]
        cond = text_encoder.encode([c.caption for c in part]).to(device)
        actions = torch.stack([motion.action_ids(c, frames) for c in part]).to(device)
        if streaming:
            text, acts = (lambda _f, e=cond: e), (lambda f, n, a=actions: a[:, f : f + n])
            null = text_encoder.null(len(part)) if guidance > 1 else None
            chunks = stream_chunks(model, scheduler, seeds[i : i + batch_size], steps, text, acts, frames, guidance, null)
            out.append(torch.cat([c.frames for c in chunks], dim=1))
        else:
            null = text_encoder.null(len(part)).to(device)
            out.append(sample_clips(model, scheduler, cond, null, seeds[i : i + batch_size], frames, steps, guidance, actions))
    return torch.cat(out)


def frame_strip(clips: torch.Tensor, captions: list[str] | None = None, every: int = 1, scale: int = 2) -> Image.Image:
    """One row per clip, frames left to right: how a video run's samples are previewed."""
    frames = to_uint8_frames(clips[:, ::every])
    b, t, h, w, _ = frames.shape
    grid = frames.transpose(0, 2, 1, 3, 4).reshape(b * h, t * w, 3)
    image = Image.fromarray(np.ascontiguousarray(grid))
    return image.resize((image.width * scale, image.height * scale), Image.NEAREST)


class VideoMethod(ExportedMethod):
    """The loop's hooks for video methods (see trainer/methods/__init__.py): batches, evaluation,
    previews and export. Subclasses set `networks`, `primary`, `role`, `streaming` and `loss`."""

    primary = "model"
    uses_text_encoder = True
    streaming = False  # evaluate chunk by chunk through the KV cache (causal students)
    stochastic_sampling = False

    def data_source(self):
        return functools.partial(
            video_batch_cpu,
            seed=self.config.seed,
            batch_size=self.config.batch_size,
            frames=self.frames,
            interactive_fraction=self.interactive_fraction,
            tokenizer=self.text_encoder.tokenizer,
            max_tokens=self.text_encoder.max_tokens,
        )

    def phases(self, step: int) -> list[str]:
        return [self.primary]

    def encode(self, batch: dict) -> TextEmbedding:
        return self.text_encoder.encode_tokens(batch["tokens"])

    def sampler(self):
        return new_scheduler(self.shipped("scheduler_shift"), stochastic=self.stochastic_sampling)

    def eval_settings(self) -> dict:
        return super().eval_settings() | {"eval_frames": self.frames}

    def _generate(self, network, clips: list) -> torch.Tensor:
        s = self.eval_settings()
        return sample_for_clips(
            network, self.text_encoder, clips, self.frames, s["eval_steps"], s["eval_guidance"], self.sampler(), self.streaming
        )

    def eval_clip_count(self) -> str:
        n, interactive = self.config.eval_prompts, max(1, self.config.eval_prompts // 4)
        return f"{n + interactive} ({interactive} interactive)"

    def evaluate(self, network) -> dict[str, float]:
        clips = motion.eval_clips(self.config.eval_prompts, self.frames, interactive=False)
        clips += motion.eval_clips(max(1, self.config.eval_prompts // 4), self.frames, seed=2025, interactive=True)
        frames = to_uint8_frames(self._generate(network, clips), motion.RESOLUTION)
        return motion.judge_clips(frames, clips) | {"objects_vs_named": motion.objects_vs_named(frames, clips)}

    def diversity(self, network) -> float:
        from trainer.guard import diversity

        clips = [c for c in motion.eval_clips(2, self.frames, seed=11) for _ in range(4)]
        first = self._generate(network, clips)[:, 0]  # first frames: where a collapsed student shows it first
        return diversity(first, 4)

    def preview(self, network) -> Image.Image:
        clips = motion.eval_clips(6, self.frames, seed=7) + motion.eval_clips(2, self.frames, seed=8, interactive=True)
        return frame_strip(self._generate(network, clips))

    def export(self, network, summary: dict, metrics: dict) -> Path:
        import copy

        config = self.config
        out = self.output_dir()
        data = {
            "world": "motion",
            "seed": config.seed,
            "clips_seen": summary["images_seen"],
            "frames_per_clip": self.frames,
            # > 0: trained chunk-causally too, so the engine can stream it (engines/video.streams)
            "causal_fraction": getattr(self.args, "causal_fraction", 1.0 if self.streaming else 0.0),
            "init_from": config.init_from,
        }
        if getattr(getattr(self, "args", None), "stage", None):  # e.g. Self-Forcing's ode_init before its DMD stage
            data["stage"] = self.args.stage
        source = f"{self.eval_clip_count()} held-out clips"
        card = self.model_card("video", int(network.config.resolution), data, summary, metrics, source)
        out.mkdir(parents=True, exist_ok=True)
        copy.deepcopy(network).to("cpu", DTYPES[config.export.dtype]).save_pretrained(out / VIDEO_FOLDER, safe_serialization=True)
        self.sampler().save_pretrained(out / "scheduler")
        card.save(out)
        write_model_card(out)
        return out
