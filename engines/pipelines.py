"""Public diffusers text-to-image pipelines as engines: SD-Turbo / SD 1.x-2.x, SDXL(-Turbo), LCM-LoRA on
either, SANA-Sprint and FLUX.1 (schnell class), loaded from a local `save_pretrained` directory.

diffusers does all the work: the pipeline class named by `model_index.json` (looked up in a fixed table,
never eval'd) loads its own text encoders, scheduler and VAE from safetensors, and each request is one call
of that pipeline with image i seeded by `seed + i` (our convention: a batch image reproduces alone). What
this module adds is the engine contract around the call:
- streaming: the pipeline runs in a worker thread; `callback_on_step_end` decodes the scheduler's clean-image
  estimate after each step with the pipeline's own VAE, and the results come back through a queue;
- the card: family, default steps and guidance, resolution, read from the configs without loading weights;
- checks: supported class, every component folder present, weights only as readable safetensors.

Backends (`_LOADERS`): `torch`; `compiled` (CUDA: the denoiser and decoder through torch.compile); `onnx`
refuses with BackendUnavailable (our exporter covers Distillery checkpoints only).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import importlib
import importlib.util
import queue
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import PIL.Image
import torch

from engines.base import collect
from engines.card import ModelCard, read_json
from engines.checkpoints import check_safetensors
from engines.errors import BackendUnavailable, CheckpointError
from engines.graphs import graph_worker
from engines.requests import ImageBatch, ImageRequest
from engines.results import Result, Timings

ENGINE_NAME = "pipeline"  # a card's `engine` value that routes it here (see engines/registry.py)
PIPELINE_INDEX = "model_index.json"
_COMPONENT_LIBRARIES = ("diffusers", "transformers")  # what a model_index.json may import components from
_LORA_FILE = "pytorch_lora_weights.safetensors"  # diffusers' default LoRA weight name


@dataclass(frozen=True)
class Family:
    """What a pipeline is for a user: a few-step student or a many-step teacher, and its sampling defaults."""

    method: str
    role: str
    steps: int
    guidance: float


@dataclass(frozen=True)
class Layout:
    """What differs between the supported pipeline classes; everything else is the pipeline's own."""

    denoiser: str  # component folder of the denoising network
    vae_blocks: str  # VAE config list whose length sets the VAE's scale factor (2 ** (len - 1))
    cuda_dtype: torch.dtype
    family: Callable[[Path, dict, bool], Family]  # (directory, model_index, has LoRA) -> Family
    sample_size: Callable[[dict], int]  # denoiser config -> latent side the pipeline defaults to
    decode: Callable[[Any, torch.Tensor, int], torch.Tensor]  # (pipe, clean latents, px) -> images in [-1, 1]
    call_kwargs: Callable[[int, int], dict[str, Any]]  # (steps, px) -> extra arguments of the pipeline call
    lora: bool = False  # LCM-LoRA applies (UNet pipelines)


def _is_turbo(directory: Path, scheduler: dict) -> bool:
    """SD-/SDXL-Turbo ship an Euler scheduler with 'trailing' timesteps (base SD and SDXL use 'leading'),
    which is what makes their 1-4 step sampling start from pure noise; a local copy may also keep the name."""
    return scheduler.get("timestep_spacing") == "trailing" or "turbo" in _model_name(directory).lower()


def _sd_family(xl: bool) -> Callable[[Path, dict, bool], Family]:
    name = "sdxl" if xl else "sd"

    def family(directory: Path, index: dict, lora: bool) -> Family:
        if lora:  # LCM-LoRA: 4 steps without CFG (guidance 1), as its authors recommend
            return Family("lcm-lora", "student", 4, 1.0)
        scheduler = read_json(directory / "scheduler", "scheduler_config.json")
        if _is_turbo(directory, scheduler):  # adversarial diffusion distillation: 1 step, no CFG
            return Family(f"{name}-turbo-class", "student", 1, 0.0)
        # the base model: diffusers' own defaults (50 steps; guidance 7.5 for SD, 5.0 for SDXL)
        return Family("stable-diffusion-xl" if xl else "stable-diffusion", "teacher", 50, 5.0 if xl else 7.5)

    return family


def _sana_sprint_family(directory: Path, index: dict, lora: bool) -> Family:
    # 2 steps with SANA-Sprint's embedded guidance at the pipeline's default scale (4.5)
    return Family("sana-sprint", "student", 2, 4.5)


def _flux_family(directory: Path, index: dict, lora: bool) -> Family:
    config = read_json(directory / "transformer", "config.json")
    if not config.get("guidance_embeds"):  # timestep-distilled (schnell): 4 steps, guidance unused
        return Family("flux-schnell-class", "student", 4, 0.0)
    return Family("flux-dev-class", "teacher", 28, 3.5)  # guidance-distilled (dev): diffusers' documented defaults


def _decode_sd(pipe, latents: torch.Tensor, px: int) -> torch.Tensor:
    # StableDiffusionPipeline's final decode
    vae = pipe.vae
    return vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor, return_dict=False)[0]


def _decode_sdxl(pipe, latents: torch.Tensor, px: int) -> torch.Tensor:
    # StableDiffusionXLPipeline's final decode. Its VAE overflows in fp16 (config force_upcast): the pipeline
    # casts it to fp32 for the decode and back, and so does this (keeping it in fp32 breaks the pipeline's own
    # decode, which feeds it fp16 latents).
    vae, config = pipe.vae, pipe.vae.config
    upcast = vae.dtype == torch.float16 and config.get("force_upcast")
    if upcast:
        vae.to(torch.float32)
    try:
        latents = latents.to(vae.dtype)
        if config.get("latents_mean") is not None and config.get("latents_std") is not None:
            mean = torch.tensor(config.latents_mean).view(1, -1, 1, 1).to(latents)
            std = torch.tensor(config.latents_std).view(1, -1, 1, 1).to(latents)
            return vae.decode(latents * std / config.scaling_factor + mean, return_dict=False)[0]
        return vae.decode(latents / config.scaling_factor, return_dict=False)[0]
    finally:
        if upcast:
            vae.to(torch.float16)


def _decode_sana(pipe, latents: torch.Tensor, px: int) -> torch.Tensor:
    # SanaSprintPipeline's final decode: its latents live scaled by the scheduler's sigma_data
    vae = pipe.vae
    latents = (latents / pipe.scheduler.config.sigma_data).to(vae.dtype)
    return vae.decode(latents / vae.config.scaling_factor, return_dict=False)[0]


def _decode_flux(pipe, latents: torch.Tensor, px: int) -> torch.Tensor:
    # FluxPipeline's final decode: its latents are packed 2x2 patches
    vae = pipe.vae
    latents = type(pipe)._unpack_latents(latents, px, px, pipe.vae_scale_factor)
    latents = latents / vae.config.scaling_factor + vae.config.shift_factor
    return vae.decode(latents.to(vae.dtype), return_dict=False)[0]


def _config_sample_size(config: dict) -> int:
    return int(config.get("sample_size") or 0)


def _flux_sample_size(config: dict) -> int:
    return 128  # FluxTransformer2DModel has no sample size; FluxPipeline.__init__ sets default_sample_size = 128


def _size_kwargs(steps: int, px: int) -> dict[str, Any]:
    return {"height": px, "width": px}


def _sana_kwargs(steps: int, px: int) -> dict[str, Any]:
    # Our resolution is the model's native square, so aspect-ratio binning has nothing to do (and would map
    # a small test model to 1024 px). SCM's intermediate timestep exists for exactly 2 steps only.
    extra: dict[str, Any] = {"use_resolution_binning": False}
    if steps != 2:
        extra["intermediate_timesteps"] = None
    return {**_size_kwargs(steps, px), **extra}


_SD = dict(denoiser="unet", vae_blocks="block_out_channels", cuda_dtype=torch.float16, lora=True)
_TRANSFORMER = dict(denoiser="transformer", cuda_dtype=torch.bfloat16)
LAYOUTS: dict[str, Layout] = {
    "StableDiffusionPipeline": Layout(
        **_SD, family=_sd_family(xl=False), sample_size=_config_sample_size, decode=_decode_sd, call_kwargs=_size_kwargs
    ),
    "StableDiffusionXLPipeline": Layout(
        **_SD, family=_sd_family(xl=True), sample_size=_config_sample_size, decode=_decode_sdxl, call_kwargs=_size_kwargs
    ),
    "SanaSprintPipeline": Layout(
        **_TRANSFORMER,
        vae_blocks="encoder_block_out_channels",
        family=_sana_sprint_family,
        sample_size=_config_sample_size,
        decode=_decode_sana,
        call_kwargs=_sana_kwargs,
    ),
    "FluxPipeline": Layout(
        **_TRANSFORMER,
        vae_blocks="block_out_channels",
        family=_flux_family,
        sample_size=_flux_sample_size,
        decode=_decode_flux,
        call_kwargs=_size_kwargs,
    ),
}


# ---------------------------------------------------------------------------------------------- cards
def _model_name(directory: Path) -> str:
    """The directory's name, or the repository's for a Hugging Face cache snapshot (models--org--name/snapshots/<hash>)."""
    directory = directory.resolve()
    if directory.parent.name == "snapshots" and directory.parent.parent.name.startswith("models--"):
        return directory.parent.parent.name.split("--")[-1]
    return directory.name


def _known_library(library: Any) -> bool:
    """diffusers, transformers, or one of diffusers' own pipeline packages (SD 1.x lists its safety checker as
    ["stable_diffusion", ...]); never a module of the checkpoint's own (custom code). diffusers is located, not imported."""
    if library in _COMPONENT_LIBRARIES:
        return True
    spec = importlib.util.find_spec("diffusers")
    if not isinstance(library, str) or not re.fullmatch(r"[a-z0-9_]+", library) or spec is None:
        return False
    return any((Path(root) / "pipelines" / library / "__init__.py").is_file() for root in spec.submodule_search_locations or [])


def read_index(directory: Path) -> tuple[str, Layout, dict[str, Any]]:
    """`model_index.json`: the pipeline class (supported ones only) and its components, each checked to come
    from diffusers or transformers (never the checkpoint's own code) and to have its folder."""
    index = read_json(directory, PIPELINE_INDEX)
    class_name = index.get("_class_name")
    if class_name not in LAYOUTS:
        raise CheckpointError(
            f"{directory}/{PIPELINE_INDEX} names pipeline class {class_name!r}, which Distillery does not serve; "
            f"supported: {', '.join(LAYOUTS)}"
        )
    for name, entry in index.items():
        if name.startswith("_") or not isinstance(entry, list):
            continue
        if entry in ([None, None], []):
            continue  # an optional component left out (e.g. no safety checker)
        if len(entry) != 2 or not _known_library(entry[0]):
            raise CheckpointError(
                f"{directory}/{PIPELINE_INDEX}: component {name!r} is {entry!r}; only [library, class] pairs from "
                f"{' or '.join(_COMPONENT_LIBRARIES)} (or a diffusers pipeline package) are loaded, never custom code"
            )
        if not (directory / name).is_dir():
            raise CheckpointError(
                f"{directory} has no {name}/ folder, but {PIPELINE_INDEX} lists it ({entry[1]}): the pipeline is "
                "incomplete; download it again"
            )
    layout = LAYOUTS[class_name]
    for name in (layout.denoiser, "vae", "scheduler"):
        if not isinstance(index.get(name), list) or index[name][:1] == [None]:
            raise CheckpointError(f"{directory}/{PIPELINE_INDEX} has no {name!r} component; a {class_name} needs one")
    return class_name, layout, index


def check_weights(directory: Path, index: dict[str, Any]) -> None:
    """Every network component (a folder with config.json) holds readable safetensors; pickles are refused."""
    for name, entry in index.items():
        folder = directory / name
        if not name.startswith("_") and isinstance(entry, list) and entry[:1] != [None] and (folder / "config.json").is_file():
            check_safetensors(folder)


def lora_weights(lora: Path) -> Path:
    """The LoRA's safetensors file inside directory `lora` (checked readable)."""
    if not lora.is_dir():
        what = "is a file; give the directory that holds it" if lora.exists() else "does not exist"
        raise CheckpointError(f"LoRA path {lora} {what} (a directory with {_LORA_FILE}, as diffusers saves it)")
    files = check_safetensors(lora)
    if len(files) == 1:
        return files[0]
    if (lora / _LORA_FILE).is_file():
        return lora / _LORA_FILE
    raise CheckpointError(
        f"LoRA directory {lora} holds several safetensors files ({', '.join(f.name for f in files)}) and no {_LORA_FILE}; "
        "keep only the one to load"
    )


def _sample_size(directory: Path, layout: Layout) -> int:
    """The pipeline's default output side: the denoiser's latent sample size times the VAE's scale factor."""
    config = read_json(directory / layout.denoiser, "config.json")
    vae = read_json(directory / "vae", "config.json")
    latent, blocks = layout.sample_size(config), vae.get(layout.vae_blocks)
    if latent < 1 or not isinstance(blocks, list) or not blocks:
        raise CheckpointError(
            f"cannot tell the resolution of {directory}: {layout.denoiser}/config.json sample_size="
            f"{config.get('sample_size')!r}, vae/config.json {layout.vae_blocks}={blocks!r}"
        )
    return latent * 2 ** (len(blocks) - 1)


def _card_id(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "-", name)[:100].lstrip("._-") or "pipeline"


def pipeline_card(path: str | Path, lora: str | Path | None = None) -> ModelCard:
    """A card for a diffusers pipeline directory without a Distillery card (a public checkpoint), read from its
    configs without loading weights. With `lora`, the card is the base plus that LoRA (LCM-LoRA)."""
    directory = Path(path)
    class_name, layout, index = read_index(directory)
    lora_path = Path(lora).expanduser() if lora is not None else None
    if lora_path is not None:
        if not layout.lora:
            supported = ", ".join(name for name, item in LAYOUTS.items() if item.lora)
            raise CheckpointError(f"a LoRA (LCM-LoRA) applies to {supported} only; {directory} is a {class_name}")
        lora_weights(lora_path)
    check_weights(directory, index)
    family = layout.family(directory, index, lora_path is not None)
    base_id = _card_id(_model_name(directory))
    model_id = _card_id(f"{_model_name(directory)}-{_model_name(lora_path)}") if lora_path else base_id
    description = f"public diffusers {class_name} loaded from {directory}" + (f" with LoRA {lora_path}" if lora_path else "")
    return ModelCard(
        id=model_id,
        modality="image",
        role=family.role,
        method=family.method,
        default_steps=family.steps,
        resolution=_sample_size(directory, layout),
        path=directory,
        teacher=base_id if lora_path else None,  # an LCM-LoRA is distilled from its base model
        default_guidance=family.guidance,
        description=description,
        engine=ENGINE_NAME,
        pipeline={"class": class_name, "lora": str(lora_path) if lora_path else None},
    )


# ---------------------------------------------------------------------------------------------- loading
def _load_torch(card: ModelCard, device: torch.device):
    """The pipeline in eager PyTorch: fp16 on CUDA (bf16 for SANA / FLUX, which are trained in it), fp32 on CPU."""
    directory = Path(card.path)
    class_name, layout, index = read_index(directory)
    check_weights(directory, index)
    lora = card.pipeline.get("lora")
    weights = lora_weights(Path(lora)) if lora else None
    dtype = layout.cuda_dtype if device.type == "cuda" else torch.float32
    cls = getattr(importlib.import_module("diffusers"), class_name)
    try:
        pipe = cls.from_pretrained(directory, dtype=dtype, use_safetensors=True, local_files_only=True)
        if weights is not None:
            _apply_lcm_lora(pipe, weights)
    except (OSError, ValueError, RuntimeError, KeyError) as err:  # diffusers' own messages, with the path
        raise CheckpointError(f"cannot load {class_name} from {directory}: {err}") from err
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def _apply_lcm_lora(pipe, weights: Path) -> None:
    """LCM-LoRA: diffusers loads the adapter (through peft), fuses it into our in-memory copy of the base
    weights (never the files) and drops the adapter layers; the scheduler becomes LCM's, from the base config."""
    from diffusers import LCMScheduler

    pipe.load_lora_weights(str(weights.parent), weight_name=weights.name, use_safetensors=True, local_files_only=True)
    pipe.fuse_lora()
    pipe.unload_lora_weights()
    pipe.scheduler = LCMScheduler.from_config(pipe.scheduler.config)


def _unavailable(message: str) -> Callable[[ModelCard, torch.device], Any]:
    def load(card: ModelCard, device: torch.device):
        raise BackendUnavailable(message)

    return load


def _load_compiled(card: ModelCard, device: torch.device):
    """The pipeline for the compiled backend. SD-class pipelines stay eager here: the engine serves them
    through engines/realtime.py's RealtimeSD (prompt cache, fused projections, CUDA graphs; timed by
    `python -m bench serving`). Other families get their denoiser and decoder through torch.compile in its
    default mode (fused kernels, no CUDA graphs: they keep the pipeline's own call, previews included)."""
    if device.type != "cuda":
        raise BackendUnavailable(
            "the compiled backend (torch.compile) runs on a CUDA GPU only: on CPU its compile time outweighs any gain; "
            "use backend 'torch' here"
        )
    from engines.realtime import compile_pipeline_networks

    pipe = _load_torch(card, device)
    if not _serves_realtime(pipe):
        compile_pipeline_networks(pipe, mode="default")
    return pipe


def _serves_realtime(pipe) -> bool:
    """SD-class pipelines go through engines/realtime.py, unless they carry a safety checker, which that path
    does not run (SD 1.x checkpoints): those keep the pipeline's own call, so flagged images stay blanked."""
    return type(pipe).__name__ == "StableDiffusionPipeline" and getattr(pipe, "safety_checker", None) is None


# backend -> loader(card, device) -> a ready pipeline.
_LOADERS: dict[str, Callable[[ModelCard, torch.device], Any]] = {
    "torch": _load_torch,
    "compiled": _load_compiled,
    "onnx": _unavailable(
        "the onnx backend needs an export from `python -m trainer export`, which covers Distillery checkpoints only, "
        "not public diffusers pipelines; use backend 'torch'"
    ),
}


BACKENDS = tuple(_LOADERS)


def check_backend(backend: str) -> None:
    if backend not in _LOADERS:
        raise BackendUnavailable(f"pipeline engine backend {backend!r} is not available; choose one of: {', '.join(_LOADERS)}")


# ---------------------------------------------------------------------------------------------- engine
class _Probe:
    """What one pipeline call reveals besides its output: how long text encoding took and the scheduler's
    latest clean-image estimate. Per engine, safe because the engine's lock runs one call at a time."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.encode_ms = 0.0
        self.estimate: torch.Tensor | None = None


def _watch(pipe, probe: _Probe) -> None:
    """Wrap this pipeline instance's `encode_prompt` (to time it) and its scheduler's `step` (to keep the
    clean-image estimate that most schedulers compute and the pipeline discards): previews then show where
    the sample is heading, as our own image engine's do, not the re-noised latents between steps."""
    encode, step, scheduler = pipe.encode_prompt, pipe.scheduler.step, pipe.scheduler
    flow = type(scheduler).__name__ == "FlowMatchEulerDiscreteScheduler"

    # functools.wraps keeps the signatures visible: pipelines inspect `scheduler.step`'s parameters to decide
    # whether to pass it the generators (ancestral and SCM schedulers draw fresh noise from them)
    @functools.wraps(encode)
    def timed_encode(*args, **kwargs):
        start = time.perf_counter()
        try:
            return encode(*args, **kwargs)
        finally:
            probe.encode_ms += (time.perf_counter() - start) * 1000

    @functools.wraps(step)
    def keep_estimate(model_output, timestep, sample, *args, **kwargs):
        out = step(model_output, timestep, sample, *args, **kwargs)
        fields = out if isinstance(out, tuple) else out.to_tuple()
        if len(fields) > 1:  # Euler, LCM, SCM, DDIM: (prev_sample, clean estimate)
            probe.estimate = fields[1]
        elif flow:  # flow matching returns none; x0 = x_t - sigma_t * v at the sigma just stepped from
            sigma = scheduler.sigmas[scheduler.step_index - 1].to(sample.device, torch.float32)
            probe.estimate = sample.float() - sigma * model_output.float()
        else:
            probe.estimate = None
        return out

    pipe.encode_prompt = timed_encode
    scheduler.step = keep_estimate


class PipelineEngine:
    """Thread-safe: one pipeline call at a time (a diffusers pipeline keeps per-call state on itself)."""

    def __init__(
        self, card: ModelCard, pipe, device: torch.device, backend: str = "torch", load_ms: float = 0.0, realtime=None
    ) -> None:
        """`realtime`: an engines.realtime.RealtimeSD over `pipe` to serve through (made, compiled, for the
        compiled backend of SD-class pipelines; tests pass an eager one to check the path on CPU)."""
        check_backend(backend)
        if type(pipe).__name__ not in LAYOUTS:
            raise CheckpointError(
                f"{type(pipe).__name__} is not a pipeline class this engine serves; supported: {', '.join(LAYOUTS)}"
            )
        self.card = card
        self.pipe = pipe
        self.device = device
        self.backend = backend
        self.load_ms = load_ms
        self.layout = LAYOUTS[type(pipe).__name__]
        self._probe = _Probe()
        self._lock = threading.Lock()
        self._first_call = threading.Event()
        _watch(pipe, self._probe)
        # One long-lived worker thread runs every call; with CUDA graphs it is the process's graph thread
        # (engines/graphs.py: torch keeps graph trees per thread), so previews stay live.
        if realtime is None and backend == "compiled" and _serves_realtime(pipe):
            from engines.realtime import RealtimeSD

            realtime = RealtimeSD(pipe, compile=True)
        self._realtime = realtime
        self._own_worker = not (realtime is not None and realtime.compiled)
        if self._own_worker:
            self._worker = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"pipeline-{card.id}")
        else:
            self._worker = graph_worker()
            self._worker.submit(realtime.warm_up).result()  # compile and record now, not on a user's request

    @classmethod
    def from_card(cls, card: ModelCard, device: torch.device, text_encoder=None, backend: str = "torch") -> PipelineEngine:
        """`text_encoder` is ignored: a pipeline brings its own."""
        check_backend(backend)
        start = time.perf_counter()
        pipe = _LOADERS[backend](card, device)
        return cls(card, pipe, device, backend, (time.perf_counter() - start) * 1000)

    @property
    def resolution(self) -> int:
        return self.card.resolution

    def _submit(self, fn, *args) -> concurrent.futures.Future:
        """Run `fn` on the engine's one worker thread (an unloaded engine says so, as `_call` does)."""
        if self.pipe is None:
            raise RuntimeError(f"engine {self.card.id!r} was unloaded; get it again from the registry")
        return self._worker.submit(fn, *args)

    def _call(self, prompts: list[str], seeds: list[int], steps: int, guidance: float, **kwargs):
        """One pipeline call, image i from `torch.Generator().manual_seed(seeds[i])` (CPU generators: the same
        seed gives the same start on every device, as diffusers documents for reproducibility)."""
        if self.pipe is None:
            raise RuntimeError(f"engine {self.card.id!r} was unloaded; get it again from the registry")
        generators = [torch.Generator().manual_seed(s) for s in seeds]
        extra = self.layout.call_kwargs(steps, self.resolution)
        return self.pipe(
            prompt=prompts, num_inference_steps=steps, guidance_scale=guidance, generator=generators, **extra, **kwargs
        )

    def _nfe(self, steps: int, guidance: float) -> int:
        # classifier-free guidance runs the network twice a step (batched); SANA-Sprint and FLUX embed guidance
        if self._realtime is not None:
            return steps * (2 if self._realtime.uses_cfg(guidance) else 1)
        return steps * (2 if getattr(self.pipe, "do_classifier_free_guidance", False) else 1)

    def _preview(self, latents: torch.Tensor):
        """PIL images of the latest clean estimate (else of the latents), decoded as the pipeline decodes its
        output: one VAE decode a step, affordable for families that take 1-4 steps."""
        estimate = self._probe.estimate if self._probe.estimate is not None else latents
        images = self.layout.decode(self.pipe, estimate, self.resolution)
        # SD 1.x pipelines may carry a safety checker that blanks flagged outputs: previews must not show them either
        check, flagged = getattr(self.pipe, "run_safety_checker", None), None
        if check is not None:
            images, flagged = check(images, self.device, images.dtype)
        denormalize = None if flagged is None else [not f for f in flagged]
        return self.pipe.image_processor.postprocess(images, output_type="pil", do_denormalize=denormalize)

    def _run(self, prompts: list[str], seeds: list[int], steps: int, guidance: float, out: queue.SimpleQueue, stop) -> None:
        """The worker: runs the pipeline, putting ("preview" | "final", step, images, nfe, encode_ms) on `out`
        (or ("error", exception)). A set `stop` (the consumer went away) interrupts the pipeline."""

        def on_step(pipe, i: int, t, tensors: dict) -> dict:
            if stop.is_set():
                pipe._interrupt = True  # diffusers' documented way to stop a pipeline from its callback
            elif i + 1 < steps:  # the last step's image is the pipeline's own final decode
                out.put(("preview", i + 1, self._preview(tensors["latents"]), self._nfe(i + 1, guidance), self._probe.encode_ms))
            return {}

        if self._realtime is not None:
            return self._run_realtime(prompts, seeds, steps, guidance, out, stop)
        try:
            with self._lock:
                self._probe.reset()
                images = self._call(prompts, seeds, steps, guidance, callback_on_step_end=on_step).images
                out.put(("final", steps, images, self._nfe(steps, guidance), self._probe.encode_ms))
        except BaseException as err:  # handed to the consumer, which re-raises it in its own thread
            out.put(("error", err))

    def _run_realtime(self, prompts, seeds, steps: int, guidance: float, out: queue.SimpleQueue, stop) -> None:
        """`_run` through RealtimeSD: the same messages; previews decode its clean estimate like `_preview`."""
        realtime = self._realtime
        try:
            with self._lock, torch.no_grad():  # previews decode here, outside the generator's own no_grad
                for step, value in realtime.stream(prompts, seeds, steps, guidance):
                    if stop.is_set():
                        return
                    if step <= steps - 1:
                        self._probe.estimate = value
                        out.put(("preview", step, self._preview(value), self._nfe(step, guidance), realtime.encode_ms))
                    elif step > steps:
                        images = [PIL.Image.fromarray(a) for a in value.numpy()]
                        out.put(("final", steps, images, self._nfe(steps, guidance), realtime.encode_ms))
        except BaseException as err:
            out.put(("error", err))

    def stream(self, request: ImageRequest) -> Iterator[Result]:
        """A preview Result after each step but the last, then the final one (the pipeline's own output)."""
        with contextlib.closing(self.stream_many([request])) as many:  # closing this stream closes that one
            for results in many:
                yield results[0]

    def stream_many(self, requests: Sequence[ImageRequest]) -> Iterator[list[Result]]:
        """Many requests in one pipeline call (the studio's dynamic batching), yielding at every step one Result
        per request, in order. Each keeps its prompt and seeds (image i of a request from its seed + i)."""
        batch = ImageBatch.of(requests, self.card.default_steps, self.card.default_guidance)
        steps = batch.steps
        load_ms = 0.0 if self._first_call.is_set() else self.load_ms
        self._first_call.set()

        updates: queue.SimpleQueue = queue.SimpleQueue()
        stop = threading.Event()
        start = time.perf_counter()
        worker = self._submit(self._run, batch.prompts, batch.image_seeds, steps, batch.guidance, updates, stop)
        try:
            while True:
                kind, *item = updates.get()
                if kind == "error":
                    raise item[0]
                step, images, nfe, encode_ms = item
                timings = Timings(load_ms, encode_ms, (time.perf_counter() - start) * 1000 - encode_ms, nfe)
                final = kind == "final"
                yield [
                    Result(own, seed, step, steps, timings, final, self.card.id, self.backend)
                    for own, seed in zip(batch.split(images), batch.seeds)
                ]
                if final:
                    return
        finally:
            stop.set()  # a consumer that stops early (closed generator) interrupts the remaining steps
            worker.result()

    def generate(self, request: ImageRequest) -> Result:
        return collect(self.stream(request))

    def sample_prompts(
        self, prompts: list[str], seeds: list[int], steps: int | None = None, guidance: float | None = None, batch_size: int = 64
    ) -> torch.Tensor:
        """Final images (B, 3, H, W) in [-1, 1] for many prompts, image i from seeds[i] (what benchmarks need)."""
        steps = steps or self.card.default_steps
        guidance = self.card.default_guidance if guidance is None else guidance

        def run() -> torch.Tensor:
            chunks = []
            with self._lock:
                for i in range(0, len(prompts), batch_size):
                    chunk_prompts, chunk_seeds = prompts[i : i + batch_size], seeds[i : i + batch_size]
                    if self._realtime is not None:
                        images = self._realtime.generate(chunk_prompts, chunk_seeds, steps, guidance)
                        chunks.append(images.permute(0, 3, 1, 2).float() / 127.5 - 1)
                    else:
                        images = self._call(chunk_prompts, chunk_seeds, steps, guidance, output_type="pt").images
                        chunks.append(images * 2 - 1)
            return torch.cat(chunks)

        return self._submit(run).result()  # on the worker thread, where the CUDA graphs live

    def unload(self) -> None:
        with self._lock:
            self.pipe = self._realtime = None
        if self._own_worker:  # the graph thread is the process's, shared
            self._worker.shutdown(wait=False)
