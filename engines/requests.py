"""Per-modality requests, validated at construction so bad input never reaches a model.

Each field error raises `InvalidRequest` naming the field, the value and the allowed range.
`None` for steps/guidance means "the checkpoint's default" and is resolved by the engine.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any

from engines.errors import InvalidRequest

MAX_PROMPT_CHARS = 1000
MAX_STEPS = 1000
MAX_BATCH = 64
MAX_SEED = 2**63 - 1
MAX_GUIDANCE = 30.0


def as_int(name: str, value: Any, low: int, high: int) -> int:
    """An integer in [low, high]; integral floats (as UI number boxes send them) are accepted."""
    if isinstance(value, bool) or value is None:
        raise InvalidRequest(f"{name} must be a whole number from {low} to {high}, got {value!r}")
    if isinstance(value, float):
        if not math.isfinite(value) or value != int(value):
            raise InvalidRequest(f"{name} must be a whole number from {low} to {high}, got {value!r}")
        value = int(value)
    if not isinstance(value, int):
        raise InvalidRequest(f"{name} must be a whole number from {low} to {high}, got {value!r}")
    if not low <= value <= high:
        raise InvalidRequest(f"{name} must be from {low} to {high}, got {value}")
    return value


def as_float(name: str, value: Any, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidRequest(f"{name} must be a number from {low} to {high}, got {value!r}")
    if not low <= value <= high:
        raise InvalidRequest(f"{name} must be from {low} to {high}, got {value}")
    return float(value)


def as_prompt(value: Any, max_chars: int = MAX_PROMPT_CHARS) -> str:
    if not isinstance(value, str):
        raise InvalidRequest(f"prompt must be text, got {type(value).__name__}")
    prompt = value.strip()
    if not prompt:
        raise InvalidRequest("prompt is empty: describe what to generate, e.g. 'a red circle left of a blue square'")
    if len(prompt) > max_chars:
        raise InvalidRequest(f"prompt is {len(prompt)} characters long; the limit is {max_chars}. Shorten it.")
    return prompt


def resolve_seed(seed: int | None) -> int:
    """A fixed seed as given, or a fresh random one (reported back in the Result)."""
    return random.SystemRandom().randrange(0, 2**31) if seed is None else seed


@dataclass(frozen=True)
class ImageRequest:
    """Text-to-image: `batch` images, image i drawn from seed + i."""

    prompt: str
    seed: int | None = None
    steps: int | None = None
    guidance: float | None = None
    batch: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "prompt", as_prompt(self.prompt))
        if self.seed is not None:
            object.__setattr__(self, "seed", as_int("seed", self.seed, 0, MAX_SEED - MAX_BATCH))
        if self.steps is not None:
            object.__setattr__(self, "steps", as_int("steps", self.steps, 1, MAX_STEPS))
        if self.guidance is not None:
            object.__setattr__(self, "guidance", as_float("guidance", self.guidance, 0.0, MAX_GUIDANCE))
        object.__setattr__(self, "batch", as_int("batch", self.batch, 1, MAX_BATCH))


@dataclass(frozen=True)
class ImageBatch:
    """Several image requests sampled as one call (the studio's dynamic batching): the steps and guidance they
    share once a model's defaults fill them in, and every image's prompt and seed (image i of a request from its
    seed + i, so it is the image that request gets alone)."""

    steps: int
    guidance: float
    seeds: list[int]  # one per request (resolved)
    prompts: list[str]  # one per image
    image_seeds: list[int]  # one per image
    sizes: list[int]  # images per request

    @classmethod
    def of(cls, requests, default_steps: int, default_guidance: float) -> ImageBatch:
        if not requests:
            raise InvalidRequest("a batch needs at least one request")
        for request in requests:
            if not isinstance(request, ImageRequest):
                raise InvalidRequest(f"the image engine takes an ImageRequest, got {type(request).__name__}")
        settings = {(r.steps or default_steps, default_guidance if r.guidance is None else r.guidance) for r in requests}
        if len(settings) > 1:
            raise InvalidRequest(
                f"requests sampled together must share steps and guidance, got (steps, guidance) {sorted(settings)}"
            )
        steps, guidance = settings.pop()
        seeds = [resolve_seed(r.seed) for r in requests]
        prompts = [r.prompt for r in requests for _ in range(r.batch)]
        image_seeds = [seed + i for r, seed in zip(requests, seeds) for i in range(r.batch)]
        return cls(steps, guidance, seeds, prompts, image_seeds, [r.batch for r in requests])

    def split(self, images: list) -> list[list]:
        """The batch's images (one per image seed), back to their requests."""
        out, start = [], 0
        for size in self.sizes:
            out.append(images[start : start + size])
            start += size
        return out


MAX_GEN_LENGTH = 1024
REMASKING = ("low_confidence", "random")


@dataclass(frozen=True)
class TextRequest:
    """Masked-diffusion text generation. `threshold` set: confidence-adaptive decoding (commit every
    token above it, at least one per step); unset: `steps` fixed steps (None = the card's default).
    Limits that depend on the model (its context, its default block) are checked by the engine."""

    prompt: str
    gen_length: int | None = None
    block_length: int | None = None
    steps: int | None = None
    threshold: float | None = None
    remasking: str = "low_confidence"
    use_cache: bool | None = None  # None: the card's default
    seed: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "prompt", as_prompt(self.prompt))
        if self.gen_length is not None:
            object.__setattr__(self, "gen_length", as_int("generation length", self.gen_length, 1, MAX_GEN_LENGTH))
        if self.block_length is not None:
            object.__setattr__(self, "block_length", as_int("block length", self.block_length, 1, MAX_GEN_LENGTH))
        if self.gen_length is not None and self.block_length is not None and self.gen_length % self.block_length:
            raise InvalidRequest(
                f"block length {self.block_length} does not divide the generation length {self.gen_length}: "
                "pick a block length that splits it into whole blocks (e.g. "
                + ", ".join(str(d) for d in range(1, self.gen_length + 1) if self.gen_length % d == 0 and d <= 64)
                + ")"
            )
        if self.steps is not None:
            object.__setattr__(self, "steps", as_int("steps", self.steps, 1, MAX_GEN_LENGTH))
        if self.threshold is not None:
            value = self.threshold
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not 0 < value <= 1:
                raise InvalidRequest(f"confidence threshold must be in (0, 1], got {value!r} (e.g. 0.9)")
            object.__setattr__(self, "threshold", float(value))
        if self.remasking not in REMASKING:
            raise InvalidRequest(f"remasking must be one of {', '.join(REMASKING)}, got {self.remasking!r}")
        if self.seed is not None:
            object.__setattr__(self, "seed", as_int("seed", self.seed, 0, MAX_SEED))


MAX_VIDEO_FRAMES = 4096  # a finite clip's cap; longer runs use endless mode (frames=0) and Stop
MAX_STEPS_PER_CHUNK = 16
VIDEO_ACTIONS = ("none", "up", "down", "left", "right")  # trainer/worlds/motion.ACTIONS, checked equal in tests


@dataclass(frozen=True)
class VideoRequest:
    """Streaming text-to-video. `frames` = 0 streams until stopped. `steps` per chunk (None: the
    card's default); `schedule` instead gives the steps of the first chunks, the last value repeating
    (Diagonal Distillation: e.g. (4, 2, 1) spends more on the first frames, which set the scene).
    `actions`: per-frame player actions (shorter than the clip: the last one is held)."""

    prompt: str
    seed: int | None = None
    steps: int | None = None
    frames: int = 16
    schedule: tuple[int, ...] | None = None
    actions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "prompt", as_prompt(self.prompt))
        if self.seed is not None:
            object.__setattr__(self, "seed", as_int("seed", self.seed, 0, MAX_SEED))
        if self.steps is not None:
            object.__setattr__(self, "steps", as_int("steps per chunk", self.steps, 1, MAX_STEPS_PER_CHUNK))
        object.__setattr__(self, "frames", as_int("length in frames (0 = endless)", self.frames, 0, MAX_VIDEO_FRAMES))
        if self.schedule is not None:
            if isinstance(self.schedule, (str, bytes)) or not hasattr(self.schedule, "__iter__") or not len(self.schedule):
                example = "e.g. (4, 2, 1)"
                raise InvalidRequest(f"schedule must be a non-empty list of steps per chunk, {example}; got {self.schedule!r}")
            steps = tuple(as_int("schedule steps", s, 1, MAX_STEPS_PER_CHUNK) for s in self.schedule)
            object.__setattr__(self, "schedule", steps)
        actions = tuple(self.actions)
        unknown = sorted({a for a in actions if a not in VIDEO_ACTIONS}, key=str)
        if unknown:
            raise InvalidRequest(f"unknown action(s) {', '.join(map(repr, unknown))}; known: {', '.join(VIDEO_ACTIONS)}")
        object.__setattr__(self, "actions", actions)

    def steps_for_chunk(self, index: int, default: int) -> int:
        if self.schedule:
            return self.schedule[min(index, len(self.schedule) - 1)]
        return self.steps or default
