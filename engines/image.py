"""Text-to-image engine: a flow-matching transformer in pixel space, conditioned on MiniLM text states.

Checkpoint layout (save_pretrained): `transformer/` (diffusers SD3Transformer2DModel),
`scheduler/` (FlowMatchEulerDiscreteScheduler), `card.json`.
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

from engines.base import collect
from engines.card import ModelCard
from engines.checkpoints import load_diffusers_model, load_scheduler
from engines.errors import BackendUnavailable, InvalidRequest
from engines.requests import ImageRequest, resolve_seed
from engines.results import Result, Timings
from engines.samplers import flow_match_sample
from engines.text_encoder import TextEmbedding, TextEncoder

BACKENDS = ("torch",)


def transformer_velocity(model, x: torch.Tensor, t: torch.Tensor, emb: TextEmbedding) -> torch.Tensor:
    """Velocity of an SD3-style transformer; t is the scheduler's timestep (1000 * sigma)."""
    dtype = next(model.parameters()).dtype
    out = model(
        hidden_states=x.to(dtype),
        encoder_hidden_states=emb.states.to(dtype),
        pooled_projections=emb.pooled.to(dtype),
        timestep=t.to(dtype),
        return_dict=False,
    )[0]
    return out.to(x.dtype)


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """(B, 3, H, W) in [-1, 1] -> PIL images."""
    array = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(np.ascontiguousarray(a)) for a in array]


def initial_noise(seed: int, batch: int, shape: tuple[int, ...], device: torch.device | str) -> torch.Tensor:
    """Image i of a batch starts from noise seeded by seed + i, drawn on the CPU: a batch image can
    be reproduced alone, and the same seed gives the same start on every device."""
    noise = [torch.randn(shape, generator=torch.Generator().manual_seed(seed + i)) for i in range(batch)]
    return torch.stack(noise).to(device)


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
    velocity = lambda x, t, emb: transformer_velocity(network, x, t, emb)
    out = []
    for i in range(0, len(prompts), batch_size):
        chunk = prompts[i : i + batch_size]
        noise = torch.cat([initial_noise(s, 1, (channels, res, res), device) for s in seeds[i : i + batch_size]])
        cond = text_encoder.encode(chunk).to(device)
        null = text_encoder.null(len(chunk)).to(device)
        states = flow_match_sample(velocity, type(scheduler).from_config(scheduler.config), noise, steps, cond, null, guidance)
        out.append(collections.deque(states, maxlen=1)[0].x)  # run to the end, keep the last state
    return torch.cat(out)


class ImageEngine:
    """Thread-safe: no state changes per request (fresh scheduler and generators each call)."""

    def __init__(
        self,
        card: ModelCard,
        transformer,
        scheduler,
        text_encoder: TextEncoder,
        device: torch.device,
        backend: str = "torch",
        load_ms: float = 0.0,
    ) -> None:
        if backend not in BACKENDS:
            raise BackendUnavailable(f"image engine backend {backend!r} is not available; choose one of: {', '.join(BACKENDS)}")
        self.card = card
        self.transformer = transformer
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
        transformer = load_diffusers_model(path / "transformer", "SD3Transformer2DModel", dtype=dtype).to(device).eval()
        scheduler = load_scheduler(path / "scheduler")
        return cls(card, transformer, scheduler, text_encoder, device, backend, (time.perf_counter() - start) * 1000)

    @property
    def resolution(self) -> int:
        return int(self.transformer.config.sample_size)

    def velocity(self, x: torch.Tensor, t: torch.Tensor, emb: TextEmbedding) -> torch.Tensor:
        return transformer_velocity(self.transformer, x, t, emb)

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
        channels = int(self.transformer.config.in_channels)
        noise = initial_noise(seed, request.batch, (channels, self.resolution, self.resolution), self.device)
        scheduler = type(self.scheduler).from_config(self.scheduler.config)
        for state in flow_match_sample(self.velocity, scheduler, noise, steps, cond, null, guidance):
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
            self.transformer, self.text_encoder, prompts, seeds, steps, guidance, self.device, self.scheduler, batch_size
        )

    def generate(self, request: ImageRequest) -> Result:
        return collect(self.stream(request))

    def unload(self) -> None:
        self.transformer = None
