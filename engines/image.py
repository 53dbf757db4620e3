"""Text-to-image engine: a flow-matching denoiser in pixel space, conditioned on MiniLM text states.

Checkpoint layout (save_pretrained): `unet/` (diffusers UNet2DConditionModel) or `transformer/`
(SD3Transformer2DModel), `scheduler/` (FlowMatchEulerDiscreteScheduler), `card.json`, and `onnx/` once
exported (`python -m trainer export`).

Backends differ only in the velocity function and the text encoding; the sampler is the one shared
`flow_match_sample`, so the same seed gives the same image on every backend (within parity):
- `torch`: eager, fp16 on CUDA, fp32 on CPU.
- `compiled`: torch.compile (default mode) of the same network, warmed up at load on batch 1 and 2
  (CFG doubles the batch). CUDA only: on CPU, inductor's C++ compile takes minutes on our 2 cores for
  no gain on these small UNets, so it refuses (BackendUnavailable) rather than silently run eager.
- `onnx`: the exported graphs in `<checkpoint>/onnx/` via onnxruntime (CUDA EP when the engine's
  device is CUDA, else CPU); without an export it refuses and names the export command.
"""

from __future__ import annotations

import collections
import functools
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from engines import denoisers
from engines.base import collect
from engines.card import ModelCard
from engines.checkpoints import load_scheduler
from engines.errors import BackendUnavailable
from engines.requests import ImageBatch, ImageRequest
from engines.results import Result, Timings
from engines.samplers import VelocityFn, flow_match_sample
from engines.text_encoder import TextEmbedding, TextEncoder

BACKENDS = ("torch", "compiled", "onnx")


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
    velocity: VelocityFn | None = None,
) -> torch.Tensor:
    """Final images (B, 3, H, W) in [-1, 1] for many different prompts, in chunks of `batch_size`:
    what evaluations and benchmarks need. Image i starts from the noise of seeds[i], as in `stream`.
    `velocity` replaces the eager call of `network` (another backend); `network` still gives the config."""
    res, channels = int(network.config.sample_size), int(network.config.in_channels)
    embedded = denoisers.embeds_guidance(network)
    model_velocity = velocity or (lambda x, t, emb, *g: denoisers.velocity(network, x, t, emb, *g))
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


def _load_torch(path: Path, device: torch.device, text_encoder: TextEncoder):
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    denoiser = denoisers.load_denoiser(path, dtype=dtype).to(device).eval()
    return denoiser, functools.partial(denoisers.velocity, denoiser), text_encoder


def _load_compiled(path: Path, device: torch.device, text_encoder: TextEncoder):
    if device.type != "cuda":
        raise BackendUnavailable(
            "the compiled backend (torch.compile) runs on a CUDA GPU only: on CPU its compile time outweighs any gain "
            "for these small networks; use backend 'torch' or 'onnx' here"
        )
    denoiser, _, _ = _load_torch(path, device, text_encoder)
    velocity = functools.partial(denoisers.velocity, torch.compile(denoiser))
    channels, res = int(denoiser.config.in_channels), int(denoiser.config.sample_size)
    guidance = (1.0,) if denoisers.embeds_guidance(denoiser) else ()
    with torch.no_grad():  # warm-up: compile now (batch 1, and 2 for CFG), not on the first user's request
        for batch in (1, 2):
            x = torch.zeros(batch, channels, res, res, device=device)
            velocity(x, torch.full((batch,), 500.0, device=device), text_encoder.null(batch).to(device), *guidance)
    return denoiser, velocity, text_encoder


def _load_onnx(path: Path, device: torch.device, text_encoder: TextEncoder):
    from engines.onnx_backend import OnnxDenoiser, OnnxTextEncoder  # onnxruntime only where this backend is used

    denoiser = OnnxDenoiser.load(path, device)
    return denoiser, denoiser.velocity, OnnxTextEncoder(text_encoder, path, device)


# backend -> loader(path, device, text encoder) -> (network with .config, velocity fn, text encoder)
_LOADERS = {"torch": _load_torch, "compiled": _load_compiled, "onnx": _load_onnx}


def check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise BackendUnavailable(f"image engine backend {backend!r} is not available; choose one of: {', '.join(BACKENDS)}")


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
        velocity: VelocityFn | None = None,
    ) -> None:
        check_backend(backend)
        self.card = card
        self.denoiser = denoiser
        self.scheduler = scheduler
        self.text_encoder = text_encoder
        self.device = device
        self.backend = backend
        self.load_ms = load_ms
        self._velocity = velocity or functools.partial(denoisers.velocity, denoiser)
        self._first_call = threading.Event()

    @classmethod
    def from_card(cls, card: ModelCard, device: torch.device, text_encoder: TextEncoder, backend: str = "torch") -> ImageEngine:
        check_backend(backend)
        start = time.perf_counter()
        path = Path(card.path)
        denoiser, velocity, text_encoder = _LOADERS[backend](path, device, text_encoder)
        scheduler = load_scheduler(path / "scheduler")
        load_ms = (time.perf_counter() - start) * 1000
        return cls(card, denoiser, scheduler, text_encoder, device, backend, load_ms, velocity)

    @property
    def resolution(self) -> int:
        return int(self.denoiser.config.sample_size)

    def velocity(self, x: torch.Tensor, t: torch.Tensor, emb: TextEmbedding, *guidance: float) -> torch.Tensor:
        return self._velocity(x, t, emb, *guidance)

    def stream(self, request: ImageRequest) -> Iterator[Result]:
        for results in self.stream_many([request]):
            yield results[0]

    @torch.no_grad()
    def stream_many(self, requests: Sequence[ImageRequest]) -> Iterator[list[Result]]:
        """Many requests in one sampling call (the studio's dynamic batching), yielding at every step one
        Result per request, in order. They must agree on steps and guidance once the card's defaults fill
        them in; each keeps its own prompt and seeds (image i of a request from its seed + i), so its
        images are the ones `stream` gives it alone, up to batched kernels' float rounding. Timings are
        the whole call's: a request waits for the batch it runs in."""
        batch = ImageBatch.of(requests, self.card.default_steps, self.card.default_guidance)
        load_ms = 0.0 if self._first_call.is_set() else self.load_ms
        self._first_call.set()

        start = time.perf_counter()
        cond = self.text_encoder.encode(batch.prompts).to(self.device)
        null = self.text_encoder.null(len(batch.prompts)).to(self.device)
        encode_ms = (time.perf_counter() - start) * 1000

        start = time.perf_counter()
        channels = int(self.denoiser.config.in_channels)
        noise, generators = initial_noise(batch.image_seeds, (channels, self.resolution, self.resolution), self.device)
        scheduler = type(self.scheduler).from_config(self.scheduler.config)
        embedded = denoisers.embeds_guidance(self.denoiser)
        steps, guidance = batch.steps, batch.guidance
        for state in flow_match_sample(self.velocity, scheduler, noise, steps, cond, null, guidance, generators, embedded):
            final = state.step == state.total
            images = batch.split(to_pil(state.x if final else state.x0))
            timings = Timings(load_ms, encode_ms, (time.perf_counter() - start) * 1000, state.nfe)
            yield [
                Result(own, seed, state.step, state.total, timings, final, self.card.id, self.backend)
                for own, seed in zip(images, batch.seeds)
            ]

    def sample_prompts(
        self, prompts: list[str], seeds: list[int], steps: int | None = None, guidance: float | None = None, batch_size: int = 64
    ) -> torch.Tensor:
        steps = steps or self.card.default_steps
        guidance = self.card.default_guidance if guidance is None else guidance
        args = (self.denoiser, self.text_encoder, prompts, seeds, steps, guidance, self.device, self.scheduler, batch_size)
        return sample_prompts(*args, velocity=self.velocity)

    def generate(self, request: ImageRequest) -> Result:
        return collect(self.stream(request))

    def unload(self) -> None:
        self.denoiser = self._velocity = None
