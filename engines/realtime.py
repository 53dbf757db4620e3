"""Real-time generation with a public Stable Diffusion-class pipeline (SD-Turbo, SD 1.x/2.x, LCM-LoRA).

diffusers' own `StableDiffusionPipeline.__call__` re-encodes the prompt, runs each network eagerly
(hundreds of small kernel launches) and post-processes through NumPy. This path keeps diffusers'
parts — the pipeline's prompt encoding, latent preparation, scheduler and autoencoder — and changes
three things:
- prompt embeddings are cached (a live prompt box re-sends the same text many times);
- with `compile=True` the text encoder, the UNet and the decoder each become one torch.compile
  graph with CUDA graphs (`mode="reduce-overhead"`): fused kernels, one launch per network;
- an optional tiny autoencoder (diffusers `AutoencoderTiny`, TAESD layout) replaces the full VAE as
  the decoder, for interactive rates.
The denoising loop is the pipeline's own, step for step, so eager output equals the pipeline's for
the same seeds (tested); compiled output matches within fp16 kernel differences.
"""

from __future__ import annotations

import copy
import inspect
import time
from collections import OrderedDict
from collections.abc import Iterator

import torch
from diffusers.utils.torch_utils import randn_tensor

from engines.errors import BackendUnavailable, InvalidRequest
from engines.graphs import is_graph_thread, on_graph_thread

COMPILE_MODE = "reduce-overhead"  # inductor kernels replayed as CUDA graphs; never max-autotune (minutes)


def compile_pipeline_networks(pipe, mode: str = COMPILE_MODE) -> None:
    """Compile a diffusers pipeline's heavy networks in place — its denoiser (`unet` or `transformer`)
    and its autoencoder's `decode` — so that calling the pipeline itself runs them compiled (as CUDA
    graphs in the default mode). For pipelines without a real-time path of their own (SANA-Sprint,
    FLUX, SDXL) and for the pipeline engine's `compiled` backend (mode "default": it runs in threads)."""
    found = [name for name in ("unet", "transformer") if getattr(pipe, name, None) is not None]
    if not found or getattr(pipe, "vae", None) is None:
        raise BackendUnavailable(f"{type(pipe).__name__} has no unet/transformer and vae to compile")
    for name in found:
        setattr(pipe, name, torch.compile(getattr(pipe, name), mode=mode))
    pipe.vae.decode = torch.compile(pipe.vae.decode, mode=mode)  # an instance attribute shadows the method
    # With CUDA graphs (this function's default mode) call the pipeline through engines.graphs.on_graph_thread.


class PromptCache:
    """Least-recently-used map from a prompt (and whether CFG needs the negative) to its embeddings."""

    def __init__(self, size: int) -> None:
        if size < 0:
            raise ValueError(f"prompt cache size must be >= 0, got {size}")
        self.size = size
        self._items: OrderedDict[tuple[str, bool], tuple[torch.Tensor, torch.Tensor | None]] = OrderedDict()
        self.hits = self.misses = 0

    def get(self, key: tuple[str, bool]):
        if key in self._items:
            self._items.move_to_end(key)
            self.hits += 1
            return self._items[key]
        self.misses += 1
        return None

    def put(self, key: tuple[str, bool], value) -> None:
        if self.size == 0:
            return
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.size:
            self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)


class RealtimeSD:
    """Few-step text-to-image over a `StableDiffusionPipeline`'s components. The caller's pipeline keeps
    its modules; with `compile=True` its UNet's attention projections are fused in place (same math)."""

    def __init__(self, pipe, decoder=None, compile: bool = False, prompt_cache: int = 256) -> None:
        from diffusers import StableDiffusionPipeline

        if not isinstance(pipe, StableDiffusionPipeline):
            raise BackendUnavailable(
                f"the real-time path runs Stable Diffusion-class pipelines (StableDiffusionPipeline), not {type(pipe).__name__}"
            )
        if getattr(pipe, "safety_checker", None) is not None:
            raise BackendUnavailable(
                "this pipeline has a safety checker, which the real-time path does not run; serve it with its own call "
                "(the pipeline engine's torch backend)"
            )
        self.device = pipe.unet.device
        if compile and self.device.type != "cuda":
            raise BackendUnavailable("compiled real-time generation (torch.compile + CUDA graphs) needs a CUDA GPU")
        self.compiled = compile
        self.tiny_decoder = decoder is not None
        self.decoder = decoder if decoder is not None else pipe.vae
        self.cache = PromptCache(prompt_cache)
        self.encode_ms = 0.0  # the last call's prompt encoding (cache lookups included)
        self.unet = pipe.unet
        self.decode = self._decode_eager
        if compile:
            # Mathematically the same network, faster kernels (in place, so shared with the caller's pipeline):
            # q/k/v projections in one matmul, and channels-last activations for cuDNN's convolutions.
            # On an H100 they take the SD 2.1 UNet's compiled 1-step forward from 8.5 to 5.4 ms
            # (scripts/profile_realtime.py).
            if getattr(pipe.unet, "original_attn_processors", None) is None:  # not fused yet
                pipe.unet.fuse_qkv_projections()
            pipe.unet.to(memory_format=torch.channels_last)
            # One graph per network, fixed shapes per batch size: CUDA graphs replay each with one launch.
            # The text encoder is compiled inside a new pipeline object over the same weights, so the
            # caller's pipeline stays as it was (several real-time paths can share one set of weights).
            components = {**pipe.components, "text_encoder": torch.compile(pipe.text_encoder, mode=COMPILE_MODE)}
            pipe = type(pipe)(**components, requires_safety_checker=False)
            pipe.set_progress_bar_config(disable=True)
            self.unet = torch.compile(self.unet, mode=COMPILE_MODE)
            self.decode = torch.compile(self._decode_eager, mode=COMPILE_MODE)
        self.pipe = pipe
        self._templates: dict[int, object] = {}
        # the pipeline passes eta/generator to the scheduler's step only where it takes them; read once
        self._step_params = set(inspect.signature(pipe.scheduler.step).parameters)

    def _scheduler(self, steps: int):
        """A fresh scheduler set for `steps`: a copy of one prepared per step count, since building one
        (`from_config` inspects signatures) and setting its timesteps cost ~2 ms of Python a call, a
        quarter of a real-time frame. Copied deeply: multistep schedulers keep per-call history."""
        if steps not in self._templates:
            scheduler = type(self.pipe.scheduler).from_config(self.pipe.scheduler.config)
            scheduler.set_timesteps(steps, device=self.device)
            if hasattr(scheduler, "set_begin_index"):
                scheduler.set_begin_index(0)  # as pipelines do: no lookup of t in the timesteps (a GPU sync) per step
            self._templates[steps] = scheduler
        return copy.deepcopy(self._templates[steps])

    @property
    def resolution(self) -> int:
        return int(self.pipe.unet.config.sample_size) * self.pipe.vae_scale_factor

    def uses_cfg(self, guidance: float) -> bool:
        """As the pipeline decides: CFG above 1, unless the UNet takes the scale as an input (LCM)."""
        return guidance > 1.0 and self.pipe.unet.config.time_cond_proj_dim is None

    def embed(self, prompts: list[str], cfg: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(cond, uncond) embeddings for the prompts, each prompt encoded by the pipeline once and cached."""
        start = time.perf_counter()
        conds, unconds = [], []
        for prompt in prompts:
            key = (prompt, cfg)
            found = self.cache.get(key)
            if found is None:
                found = self.pipe.encode_prompt(prompt, self.device, 1, cfg)
                self.cache.put(key, found)
            conds.append(found[0])
            unconds.append(found[1])
        self.encode_ms = (time.perf_counter() - start) * 1000
        return torch.cat(conds), (torch.cat(unconds) if cfg else None)

    def _decode_eager(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents -> (B, H, W, 3) uint8, rounding as the pipeline's post-processing does (denormalise in
        the model's dtype, scale to 255 in float32)."""
        scale = 1.0 if self.tiny_decoder else self.decoder.config.scaling_factor
        image = self.decoder.decode(latents / scale, return_dict=False)[0]
        image = (image / 2 + 0.5).clamp(0, 1)
        return (image.float() * 255).round().to(torch.uint8).permute(0, 2, 3, 1)

    def _check(self, prompts: list[str], seeds: list[int], steps: int) -> None:
        if not prompts or len(prompts) != len(seeds):
            raise InvalidRequest(f"need one seed per prompt and at least one prompt; got {len(prompts)} and {len(seeds)}")
        if steps < 1:
            raise InvalidRequest(f"steps must be >= 1, got {steps}")

    def stream(self, prompts: list[str], seeds: list[int], steps: int, guidance: float) -> Iterator[tuple[int, torch.Tensor]]:
        """See `_stream`. Compiled, it runs on the process's CUDA-graph thread (engines/graphs.py): live when
        called there (the pipeline engine does), else collected there and then yielded."""
        if self.compiled and not is_graph_thread():
            yield from on_graph_thread(lambda: list(self._stream(prompts, seeds, steps, guidance)))
            return
        yield from self._stream(prompts, seeds, steps, guidance)

    @torch.no_grad()
    def _stream(self, prompts: list[str], seeds: list[int], steps: int, guidance: float) -> Iterator[tuple[int, torch.Tensor]]:
        """Yield (step, clean-latent estimate) after every step — the scheduler's own estimate where it gives
        one (Euler, LCM, DDIM), else the latents — then (steps + 1, uint8 images on the CPU). Image i comes
        from seeds[i] alone (one CPU generator per image, as the pipeline draws with a generator list)."""
        self._check(prompts, seeds, steps)
        pipe, cfg = self.pipe, self.uses_cfg(guidance)
        if self.compiled:
            torch.compiler.cudagraph_mark_step_begin()  # a new request: earlier graph outputs are consumed
        cond, uncond = self.embed(prompts, cfg)
        embeds = torch.cat([uncond, cond]) if cfg else cond
        generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
        scheduler = self._scheduler(steps)
        # as the pipeline's prepare_latents, but scaled by this call's scheduler (the shared one is never stepped)
        latent = self.resolution // pipe.vae_scale_factor
        shape = (len(prompts), pipe.unet.config.in_channels, latent, latent)
        latents = randn_tensor(shape, generator=generators, device=self.device, dtype=cond.dtype) * scheduler.init_noise_sigma
        timestep_cond = None
        if pipe.unet.config.time_cond_proj_dim is not None:
            scale = torch.tensor(guidance - 1).repeat(len(prompts))
            dim = pipe.unet.config.time_cond_proj_dim
            timestep_cond = pipe.get_guidance_scale_embedding(scale, embedding_dim=dim).to(self.device, latents.dtype)
        step_kwargs = {k: v for k, v in (("generator", generators), ("eta", 0.0)) if k in self._step_params}
        for i, t in enumerate(scheduler.timesteps):
            model_input = torch.cat([latents] * 2) if cfg else latents
            model_input = scheduler.scale_model_input(model_input, t)
            noise = self.unet(model_input, t, encoder_hidden_states=embeds, timestep_cond=timestep_cond, return_dict=False)[0]
            if cfg:
                noise_uncond, noise_text = noise.chunk(2)
                noise = noise_uncond + guidance * (noise_text - noise_uncond)
            out = scheduler.step(noise, t, latents, **step_kwargs, return_dict=False)
            latents = out[0]
            yield i + 1, out[1] if len(out) > 1 and out[1] is not None else latents
        yield steps + 1, self.decode(latents).cpu()

    def generate(self, prompts: list[str], seeds: list[int], steps: int = 1, guidance: float = 0.0) -> torch.Tensor:
        """(B, H, W, 3) uint8 images on the CPU."""
        *_, (_, images) = self.stream(prompts, seeds, steps, guidance)
        return images

    def warm_up(self, batch: int = 1, steps: int = 1, guidance: float = 0.0) -> None:
        """Compile and record the graphs for this batch size now, not on a user's first request
        (twice: CUDA graphs record on the second call of a shape)."""
        for _ in range(3):
            self.generate([f"warm-up {i}" for i in range(batch)], list(range(batch)), steps, guidance)
