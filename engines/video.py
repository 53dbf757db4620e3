"""Streaming text-to-video engine: a causal VideoDiT student that shows frames as it makes them.

Checkpoint layout (save_pretrained): `transformer/` (engines/video_model.VideoDiT), `scheduler/`
(FlowMatchEulerDiscreteScheduler), `card.json` (modality "video"). A student (`role` student) streams
chunk by chunk through its KV cache; a teacher is bidirectional and can only hand over a finished
clip, so its `stream` yields the frames after the whole clip is denoised (what the studio contrasts).

Live steering: pass a `StreamControls` to `stream` and change its prompt or held action from another
thread (the studio's Steer box and arrow keys); the stream reads them before every chunk. Setting
`stop` (or closing the generator, as a disconnected browser does) ends the stream and frees its cache.
"""

from __future__ import annotations

import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from engines.base import collect
from engines.card import ModelCard
from engines.checkpoints import load_scheduler
from engines.errors import BackendUnavailable, CheckpointError, InvalidRequest
from engines.requests import VIDEO_ACTIONS, VideoRequest, as_prompt, resolve_seed
from engines.results import Result, Timings
from engines.text_encoder import TextEmbedding, TextEncoder
from engines.video_sampling import sample_clips, stream_chunks

VIDEO_FOLDER = "transformer"  # where a video checkpoint keeps its VideoDiT (the diffusers video-pipeline layout)
BACKENDS = ("torch", "compiled")
FPS = 16  # frames per second of written clips: the motion world's speeds are per frame at this rate


def check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise BackendUnavailable(f"video engine backend {backend!r} is not available; choose one of: {', '.join(BACKENDS)}")


def load_video_network(checkpoint: str | Path, dtype: torch.dtype = torch.float32):
    """A checkpoint's VideoDiT, validated (safetensors only), to serve, to continue training or as a teacher."""
    from engines.checkpoints import load_diffusers_model

    folder = Path(checkpoint) / VIDEO_FOLDER
    if not folder.is_dir():
        raise CheckpointError(f"{checkpoint} has no {VIDEO_FOLDER}/ folder: a video checkpoint keeps its VideoDiT there")
    return load_diffusers_model(folder, "VideoDiT", dtype=dtype)


def frames_to_pil(clip: torch.Tensor) -> list[Image.Image]:
    """(T, 3, H, W) in [-1, 1] -> PIL frames."""
    array = ((clip.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(np.ascontiguousarray(a)) for a in array]


def write_mp4(frames: list[Image.Image], path: str | Path, fps: int = FPS, scale: int = 4) -> Path:
    """H.264 MP4 through imageio-ffmpeg, upscaled (nearest) so 64x64 frames are watchable."""
    import imageio.v2 as imageio

    try:  # named explicitly: without it imageio picks another plugin for .mp4 and fails obscurely
        import imageio_ffmpeg  # noqa: F401
    except ImportError as error:
        raise BackendUnavailable(
            "writing MP4 needs the imageio-ffmpeg package (pip install -r requirements.txt); the frames were made, "
            "stream() still yields them"
        ) from error
    path = Path(path)
    size = (frames[0].width * scale, frames[0].height * scale)
    with imageio.get_writer(str(path), format="FFMPEG", fps=fps, codec="libx264", quality=8, macro_block_size=1) as writer:
        for frame in frames:
            writer.append_data(np.asarray(frame.resize(size, Image.NEAREST)))
    return path


def streams(card: ModelCard) -> bool:
    """Whether a video model streams chunk by chunk: a causal student, or a teacher trained partly
    chunk-causally (its card's data.causal_fraction > 0; it streams with CFG). A purely bidirectional
    teacher finishes the whole clip before its first frame exists."""
    return card.role == "student" or float((card.data or {}).get("causal_fraction", 0) or 0) > 0


@dataclass
class StreamControls:
    """What a viewer changes while a stream runs; thread-safe, read before every chunk."""

    prompt: str | None = None  # None: keep the request's prompt
    action: str | None = None  # the held action (interactive mode); None: the request's actions
    stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def steer(self, prompt: str) -> None:
        prompt = as_prompt(prompt)  # validated here, so a bad prompt never reaches a running stream
        with self._lock:
            self.prompt = prompt

    def hold(self, action: str) -> None:
        if action not in VIDEO_ACTIONS:
            raise InvalidRequest(f"unknown action {action!r}; known: {', '.join(VIDEO_ACTIONS)}")
        with self._lock:
            self.action = action

    def snapshot(self) -> tuple[str | None, str | None]:
        with self._lock:
            return self.prompt, self.action


class VideoEngine:
    """Thread-safe: the network is shared read-only; every stream owns its KV cache and generators."""

    def __init__(
        self, card: ModelCard, network, scheduler, text_encoder: TextEncoder, device: torch.device, backend: str = "torch"
    ) -> None:
        check_backend(backend)
        self.card, self.network, self.scheduler = card, network, scheduler
        self.text_encoder, self.device, self.backend = text_encoder, device, backend
        self.load_ms = 0.0
        self._first_call = threading.Event()
        self._embeddings: dict[str, TextEmbedding] = {}
        self._embed_lock = threading.Lock()

    @classmethod
    def from_card(cls, card: ModelCard, device: torch.device, text_encoder: TextEncoder, backend: str = "torch") -> VideoEngine:
        check_backend(backend)
        if backend == "compiled" and device.type != "cuda":
            raise BackendUnavailable("the compiled video backend runs on a CUDA GPU only; use backend 'torch' here")
        start = time.perf_counter()
        # compiled: float32 weights (TF32 matmuls) with CUDA graphs; its warm-up compiles in ~20 s, where
        # half precision took minutes for a small gain at batch 1 (launch overhead dominates, not math)
        dtype = torch.float16 if device.type == "cuda" and backend == "torch" else torch.float32
        network = load_video_network(card.path, dtype).to(device).eval()
        if backend == "compiled":
            torch.backends.cuda.matmul.allow_tf32 = True
            network.compile_streaming(mode="reduce-overhead")
        engine = cls(card, network, load_scheduler(Path(card.path) / "scheduler"), text_encoder, device, backend)
        engine.load_ms = (time.perf_counter() - start) * 1000
        return engine

    @property
    def streaming(self) -> bool:
        return streams(self.card)

    @property
    def chunk(self) -> int:
        return int(self.network.config.chunk)

    def _embed(self, prompt: str) -> TextEmbedding:
        with self._embed_lock:  # a steered stream re-asks every chunk: encode each prompt once
            if prompt not in self._embeddings:
                if len(self._embeddings) > 64:
                    self._embeddings.clear()
                self._embeddings[prompt] = self.text_encoder.encode([prompt]).to(self.device)
            return self._embeddings[prompt]

    def _action_ids(self, request: VideoRequest, controls: StreamControls | None, start: int, count: int) -> torch.Tensor:
        held = controls.snapshot()[1] if controls is not None else None
        if held is not None:
            names = [held] * count
        elif request.actions:
            names = [request.actions[min(f, len(request.actions) - 1)] for f in range(start, start + count)]
        else:
            names = ["none"] * count
        return torch.tensor([[VIDEO_ACTIONS.index(n) for n in names]])  # on the CPU: the sampler checks, then moves them

    @torch.no_grad()
    def stream(
        self, request: VideoRequest, controls: StreamControls | None = None, causal: bool | None = None
    ) -> Iterator[Result]:
        """One Result per frame, as soon as it exists; the last one (finite clips) is final and
        carries every frame. Endless streams (frames=0) end when `controls.stop` is set or the
        caller closes the generator. `causal=False` makes a streaming-capable teacher denoise the
        whole clip bidirectionally instead (what the benchmark compares)."""
        if not isinstance(request, VideoRequest):
            raise InvalidRequest(f"the video engine takes a VideoRequest, got {type(request).__name__}")
        streaming = self.streaming if causal is None else (causal and self.streaming)
        if causal and not self.streaming:
            raise InvalidRequest(f"{self.card.id!r} was trained bidirectionally only: it cannot stream causally")
        if request.frames == 0 and not streaming:
            raise InvalidRequest(
                f"{self.card.id!r} is a bidirectional teacher: it denoises a whole clip at once, so it cannot stream "
                "endlessly; give a length, or pick a streaming student"
            )
        seed = resolve_seed(request.seed)
        load_ms = 0.0 if self._first_call.is_set() else self.load_ms
        self._first_call.set()
        default_steps = self.card.default_steps
        start = time.perf_counter()
        prompt = lambda: (controls.snapshot()[0] if controls is not None else None) or request.prompt  # noqa: E731
        emb = self._embed(request.prompt)
        encode_ms = (time.perf_counter() - start) * 1000
        frames_out: list[Image.Image] = []
        nfe = 0
        total = request.frames
        if streaming:
            guidance = self.card.default_guidance or 1.0
            chunks = stream_chunks(
                self.network,
                self.scheduler,
                [seed],
                lambda index: request.steps_for_chunk(index, default_steps),
                lambda _frame: self._embed(prompt()),
                lambda first, count: self._action_ids(request, controls, first, count),
                total or None,
                guidance,
                self.text_encoder.null(1) if guidance > 1 else None,
            )
            for chunk in chunks:
                nfe += chunk.nfe
                for offset, frame in enumerate(frames_to_pil(chunk.frames[0])):
                    index = chunk.start + offset
                    final = total > 0 and index == total - 1
                    if total:
                        frames_out.append(frame)
                    timings = Timings(load_ms, encode_ms, (time.perf_counter() - start) * 1000, nfe)
                    yield self._result(frame, seed, index, total, timings, final, frames_out if final else ())
                if controls is not None and controls.stop.is_set():
                    return
            return
        # bidirectional teacher: the whole clip, then its frames
        steps = request.steps or default_steps
        actions = self._action_ids(request, controls, 0, total)
        null = self.text_encoder.null(1).to(self.device)
        guidance = self.card.default_guidance or 1.0
        clip = sample_clips(self.network, self.scheduler, emb, null, [seed], total, steps, guidance, actions)[0]
        nfe = steps * (2 if guidance > 1 else 1)
        frames_out = frames_to_pil(clip)
        for index, frame in enumerate(frames_out):
            final = index == total - 1
            timings = Timings(load_ms, encode_ms, (time.perf_counter() - start) * 1000, nfe)
            yield self._result(frame, seed, index, total, timings, final, frames_out if final else ())

    def _result(self, frame, seed: int, index: int, total: int, timings: Timings, final: bool, frames) -> Result:
        return Result(
            [frame], seed, index + 1, total, timings, final, self.card.id, self.backend, frame_index=index, frames=tuple(frames)
        )

    def generate(self, request: VideoRequest, mp4: str | Path | None = None) -> Result:
        """The finished clip, written as MP4 (to `mp4`, or a temporary file)."""
        if request.frames == 0:
            raise InvalidRequest("generate() needs a finite length (frames >= 1); stream() runs endlessly")
        result = collect(self.stream(request))
        path = Path(mp4) if mp4 else Path(tempfile.mkstemp(prefix="distillery-", suffix=".mp4")[1])
        write_mp4(list(result.frames), path)
        from dataclasses import replace

        return replace(result, video_path=str(path))

    def unload(self) -> None:
        self.network = None
        self._embeddings.clear()
