"""Text-to-image engine: a flow-matching denoiser in pixel space, conditioned on MiniLM text states.

Checkpoint layout (save_pretrained): `unet/` (diffusers UNet2DConditionModel) or `transformer/`
(SD3Transformer2DModel), `scheduler/` (FlowMatchEulerDiscreteScheduler), `card.json`.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from engines import denoisers
from engines.base import collect
from engines.card import ModelCard
from engines.checkpoints import load_scheduler
from engines.errors import BackendUnavailable, InvalidRequest
from engines.requests import ImageRequest, resolve_seed
from engines.results import Result, Timings
from engines.samplers import flow_match_sample
from engines.text_encoder import TextEmbedding, TextEncoder

BACKENDS = ("torch",)


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """(B, 3, H, W) in [-1, 1] -> PIL images."""
    array = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(np.ascontiguousarray(a)) for a in array]


def initial_noise(
    seeds: list[int], shape: tuple[int, ...], device: torch.device | str
) -> tuple[torch.Tensor, list[torch.Generator]]:
    """Image i starts from noise seeded by seeds[i], drawn on the CPU: a batch image can be
    reproduced alone, and the same seed gives the same start on every device. The generators are
    returned to keep drawing from (stochastic samplers' re-noising)."""
    generators = [torch.Generator().manual_seed(seed) for seed in seeds]
    return torch.stack([torch.randn(shape, generator=g) for g in generators]).to(device), generators


@torch.no_grad()
def sample_prompts(
    network,
    text_encoder: TextEncoder,
    prompts: list[str],
    seeds: list[int],
    steps: int,
    guidance: float,
    device: torch.device,
    scheduler,
    batch_size: int = 64,
) -> torch.Tensor:
    """Final images (B, 3, H, W) in [-1, 1] for many different prompts, in chunks of `batch_size`:
    what evaluations and benchmarks need. Image i starts from the noise of seeds[i], as in `stream`."""
    res, channels = int(network.config.sample_size), int(network.config.in_channels)
    embedded = denoisers.embeds_guidance(network)
    model_velocity = lambda x, t, emb, *g: denoisers.velocity(network, x, t, emb, *g)
    out = []
    for i in range(0, len(prompts), batch_size):
        chunk = prompts[i : i + batch_size]
        noise, generators = initial_noise(seeds[i : i + batch_size], (channels, res, res), device)
        cond = text_encoder.encode(chunk).to(device)
        null = text_encoder.null(len(chunk)).to(device)
        fresh = type(scheduler).from_config(scheduler.config)
        states = flow_match_sample(model_velocity, fresh, noise, steps, cond, null, guidance, generators, embedded)
        out.append(collections.deque(states, maxlen=1)[0].x)  # run to the end, keep the last state
    return torch.cat(out)


class ImageEngine:
    """Thread-safe: no state changes per request (fresh scheduler and generators each call)."""

    def __init__(
        self,
        card: ModelCard,
        denoiser,
        scheduler,
        text_encoder: TextEncoder,
        device: torch.device,
        backend: str = "torch",
        load_ms: float = 0.0,
    ) -> None:
        if backend not in BACKENDS:
            raise BackendUnavailable(f"image engine backend {backend!r} is not available; choose one of: {', '.join(BACKENDS)}")
        self.card = card
        self.denoiser = denoiser
        self.scheduler = scheduler
        self.text_encoder = text_encoder
        self.device = device
        self.backend = backend
        self.load_ms = load_ms
        self._first_call = threading.Event()

    @classmethod
    def from_card(cls, card: ModelCard, device: torch.device, text_encoder: TextEncoder, backend: str = "torch") -> ImageEngine:
        start = time.perf_counter()
        path = Path(card.path)
        dtype = torch.float16 if device.type == "cuda" else torch.float32
        denoiser = denoisers.load_denoiser(path, dtype=dtype).to(device).eval()
        scheduler = load_scheduler(path / "scheduler")
        return cls(card, denoiser, scheduler, text_encoder, device, backend, (time.perf_counter() - start) * 1000)

    @property
    def resolution(self) -> int:
        return int(self.denoiser.config.sample_size)

    def velocity(self, x: torch.Tensor, t: torch.Tensor, emb: TextEmbedding, *guidance: float) -> torch.Tensor:
        return denoisers.velocity(self.denoiser, x, t, emb, *guidance)

    @torch.no_grad()
    def stream(self, request: ImageRequest) -> Iterator[Result]:
        if not isinstance(request, ImageRequest):
            raise InvalidRequest(f"the image engine takes an ImageRequest, got {type(request).__name__}")
        steps = request.steps or self.card.default_steps
        guidance = self.card.default_guidance if request.guidance is None else request.guidance
        seed = resolve_seed(request.seed)
        load_ms = 0.0 if self._first_call.is_set() else self.load_ms
        self._first_call.set()

        start = time.perf_counter()
        cond = self.text_encoder.encode([request.prompt] * request.batch).to(self.device)
        null = self.text_encoder.null(request.batch).to(self.device)
        encode_ms = (time.perf_counter() - start) * 1000

        start = time.perf_counter()
        channels = int(self.denoiser.config.in_channels)
        seeds = [seed + i for i in range(request.batch)]
        noise, generators = initial_noise(seeds, (channels, self.resolution, self.resolution), self.device)
        scheduler = type(self.scheduler).from_config(self.scheduler.config)
        embedded = denoisers.embeds_guidance(self.denoiser)
        for state in flow_match_sample(self.velocity, scheduler, noise, steps, cond, null, guidance, generators, embedded):
            final = state.step == state.total
            images = to_pil(state.x if final else state.x0)
            timings = Timings(load_ms, encode_ms, (time.perf_counter() - start) * 1000, state.nfe)
            yield Result(images, seed, state.step, state.total, timings, final, self.card.id, self.backend)

    def sample_prompts(
        self, prompts: list[str], seeds: list[int], steps: int | None = None, guidance: float | None = None, batch_size: int = 64
    ) -> torch.Tensor:
        steps = steps or self.card.default_steps
        guidance = self.card.default_guidance if guidance is None else guidance
        return sample_prompts(
            self.denoiser, self.text_encoder, prompts, seeds, steps, guidance, self.device, self.scheduler, batch_size
        )

    def generate(self, request: ImageRequest) -> Result:
        return collect(self.stream(request))

    def unload(self) -> None:
        self.denoiser = None
