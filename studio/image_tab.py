"""Image tab: text-to-image with a live preview of every denoising step.

`ImageHandlers` holds the event functions (plain Python, tested directly); `build` lays out the widgets
and wires them. Handlers raise `gr.Error` with the engine's own message for any bad input.

With dynamic batching on (`StudioSettings.batch_window_ms` > 0), Generate events run concurrently (up to
`max_batch_images` at once) and hand their requests to one `Batcher`, whose worker thread is the only
place that samples: requests for the same model, backend, steps and guidance that arrive together run
as one batched call, and each caller still sees its own preview at every step. Off, each request
samples alone, one at a time in the `gpu` queue shared with the other tabs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import gradio as gr

from engines.errors import CheckpointError, InvalidRequest
from engines.image import BACKENDS
from engines.requests import MAX_GUIDANCE, ImageRequest
from studio.batching import Batched, Batcher, BatchSettings
from studio.errors import user_errors
from studio.gpu import gpu
from studio.imaging import grid, upscale
from studio.pickers import random_seed, refreshed_picker

if TYPE_CHECKING:
    from engines.card import ModelCard
    from engines.registry import Registry
    from engines.results import Result
    from studio.app import StudioSettings

EXAMPLES = [
    "a red circle to the left of a blue square",
    "three yellow triangles",
    "a large white cross",
    "a purple diamond above a green ball",
]


def model_label(card: ModelCard) -> str:
    """What a model picker shows: enough to tell a 50-step teacher from a 1-step student at a glance."""
    return f"{card.id} · {card.role} · {card.method} · {card.default_steps} step{'s' * (card.default_steps != 1)}"


def model_choices(registry: Registry, role: str | None = None) -> list[tuple[str, str]]:
    """(label, id) pairs for the image models (of one role, if given), students first, as `Registry.default` picks."""
    cards = [c for c in registry.cards("image") if role is None or c.role == role]
    cards.sort(key=lambda c: (c.role != "student", c.default_steps, c.id))
    return [(model_label(c), c.id) for c in cards]


def default_model(registry: Registry) -> ModelCard | None:
    try:
        return registry.default("image")
    except CheckpointError:
        return None


def steps_info(card: ModelCard | None) -> str:
    return f"model default: {card.default_steps}" if card else "no model selected"


def guidance_info(card: ModelCard | None) -> str:
    return f"model default: {card.default_guidance:g}" if card else "no model selected"


def timing_line(result: Result, card: ModelCard, device: str, batch: int, batched: Batched | None = None) -> str:
    """The finished generation's facts. Batched, the run was shared: per image is the run over every image in it."""
    t = result.timings
    images = batched.images if batched else batch
    line = (
        f"**seed** {result.seed} · **steps** {result.total_steps} · **NFE** {t.nfe} · "
        f"**per image** {t.run_ms / images:.1f} ms (batch {batch}, run {t.run_ms:.1f} ms) · "
        f"**encode** {t.encode_ms:.1f} ms · **load** {t.load_ms:.0f} ms · "
        f"**model** `{result.model_id}` ({card.role}, {card.method}) · **device** {device} · **backend** {result.backend}"
    )
    return line + (batch_note(batched) if batched else "")


def batch_note(batched: Batched) -> str:
    """How the request was served: alone or in a batch with others, and how long it queued."""
    n = batched.others
    shared = f"**batched with** {n} other{'s' * (n != 1)} ({batched.images} images)" if n else "**batched** alone"
    return f" · {shared} · **queued** {batched.wait_ms:.0f} ms"


class ImageHandlers:
    """The Image tab's event functions, bound to one registry and the studio settings."""

    def __init__(self, registry: Registry, settings: StudioSettings) -> None:
        self.registry = registry
        self.settings = settings
        self.generate = user_errors(self._generate)
        self.select_model = user_errors(self._select_model)

        def stream(model_id: str, backend: str, request: ImageRequest) -> Iterator[Result]:
            # Only the model id, backend and request cross into the GPU worker; the registry comes from the closure.
            yield from registry.engine(model_id, backend).stream(request)

        def stream_batch(key: tuple, requests: list[ImageRequest]) -> Iterator[list[Result]]:
            # The same, for a batch: key = (model id, backend, steps, guidance), all picklable. Every image engine
            # (ours and public pipelines) samples many requests in one call.
            yield from registry.engine(key[0], key[1]).stream_many(requests)

        self._stream = gpu(stream)
        # ZeroGPU: the worker calls the wrapped `stream_batch`, so every batch still samples inside the decorated function
        # (one GPU allocation per batch, not per request). That call comes from the worker thread, on behalf of every
        # user in the batch, so ZeroGPU cannot charge it to one user's quota: a public ZeroGPU Space that relies on
        # per-user quotas should run with batch_window_ms=0, which brings back one decorated call per request.
        self.batcher: Batcher | None = None
        if settings.batching:
            batching = BatchSettings(settings.batch_window_ms, settings.max_batch_images)
            self.batcher = Batcher(gpu(stream_batch), batching, name="image-batcher")

    def request(self, prompt, seed, steps, guidance, batch) -> ImageRequest:
        """Validate the widgets' values; the engine's rules first, then this studio's batch limit."""
        request = ImageRequest(prompt=prompt, seed=seed, steps=steps, guidance=guidance, batch=batch)
        if request.batch > self.settings.max_batch:
            raise InvalidRequest(f"batch must be from 1 to {self.settings.max_batch} in this studio, got {request.batch}")
        return request

    def _generate(self, prompt, model_id, seed, steps, guidance, batch, backend="torch"):
        """Yield (preview, gallery, originals, info) once per denoising step; galleries change only at the end.
        The info line names the backend that produced the images (the engine's own, never the one asked for)."""
        request = self.request(prompt, seed, steps, guidance, batch)
        if not model_id:
            raise CheckpointError("no image model is selected; add a checkpoint directory and press refresh on the Models tab")
        card = self.registry.card(model_id)
        device, px = str(self.registry.device), self.settings.display_px
        for result, batched in self._results(card, backend or "torch", request):
            shown = [upscale(image, px) for image in result.images]
            preview = grid(shown)
            if not result.final:
                info = f"Denoising… step {result.step}/{result.total_steps} · NFE {result.timings.nfe} · seed {result.seed}"
                yield preview, gr.skip(), gr.skip(), info
                continue
            captions = [f"seed {result.seed + i}" for i in range(len(shown))]
            size = "×".join(map(str, result.images[0].size))
            originals = [(image, f"{caption} · {size} px") for image, caption in zip(result.images, captions)]
            yield preview, list(zip(shown, captions)), originals, timing_line(result, card, device, request.batch, batched)

    def _results(self, card: ModelCard, backend: str, request: ImageRequest) -> Iterator[tuple[Result, Batched | None]]:
        """The engine's results for one request: through the batcher when batching is on, else directly."""
        if self.batcher is None:
            for result in self._stream(card.id, backend, request):
                yield result, None
            return
        # Fill in the card's defaults first, so that "steps left empty" and "steps = the default" batch together.
        steps = request.steps or card.default_steps
        guidance = card.default_guidance if request.guidance is None else request.guidance
        request = dataclasses.replace(request, steps=steps, guidance=guidance)
        key: Hashable = (card.id, backend, steps, guidance)
        for batched in self.batcher.stream(key, request, images=request.batch):
            yield batched.result, batched

    def _select_model(self, model_id):
        """New defaults for steps and guidance when the model changes."""
        card = self.registry.card(model_id) if model_id else None
        return (
            gr.update(value=card.default_steps if card else None, info=steps_info(card)),
            gr.update(value=card.default_guidance if card else None, info=guidance_info(card)),
        )

    def refresh_models(self, current: str | None = None):
        """Dropdown choices after a registry refresh; keeps the selection when that model is still there."""
        card = default_model(self.registry)
        return refreshed_picker(model_choices(self.registry), current, card.id if card else None)

    random_seed = staticmethod(random_seed)


@dataclass
class ImageTab:
    handlers: ImageHandlers
    model: gr.Dropdown


def build(registry: Registry, settings: StudioSettings) -> ImageTab:
    """Lay out the Image tab inside the current Blocks context and wire its events."""
    handlers = ImageHandlers(registry, settings)
    card = default_model(registry)
    if card is None:
        gr.Markdown(
            "**No image checkpoints found.** Train one (`python -m trainer train configs/shapes-teacher.yaml`), "
            "start the studio with `--checkpoints DIR`, then press refresh on the Models tab."
        )
    with gr.Row():
        with gr.Column(scale=2):
            prompt = gr.Textbox(label="Prompt", placeholder=EXAMPLES[0], lines=2, elem_id="prompt")
            model = gr.Dropdown(model_choices(registry), value=card.id if card else None, label="Model", elem_id="model")
            with gr.Row():
                seed = gr.Number(value=0, label="Seed", precision=0, elem_id="seed", scale=3)
                dice = gr.Button("🎲 randomise", elem_id="randomise", scale=1, min_width=80)
            with gr.Row():
                steps = gr.Number(
                    value=card.default_steps if card else None, label="Steps", precision=0, info=steps_info(card), elem_id="steps"
                )
                guidance = gr.Slider(
                    0.0,
                    MAX_GUIDANCE,
                    step=0.1,
                    value=card.default_guidance if card else 1.0,
                    label="Guidance",
                    info=guidance_info(card),
                    elem_id="guidance",
                )
            batch = gr.Slider(1, settings.max_batch, step=1, value=1, label="Batch", elem_id="batch")
            backend = gr.Dropdown(
                list(BACKENDS),
                value="torch",
                label="Backend",
                info="compiled: CUDA only · onnx: needs `python -m trainer export <checkpoint> --to onnx`",
                elem_id="backend",
            )
            button = gr.Button("Generate", variant="primary", elem_id="generate")
            gr.Examples([[p] for p in EXAMPLES], inputs=[prompt], label="Example prompts")
        with gr.Column(scale=3):
            preview = gr.Image(label="Live preview", type="pil", format="png", interactive=False, elem_id="preview", height=288)
            info = gr.Markdown("Press **Generate**; the preview updates at every denoising step.", label="Info", elem_id="info")
            gallery = gr.Gallery(
                label="Results (upscaled, nearest neighbour)",
                format="png",
                columns=4,
                object_fit="contain",
                height=340,
                elem_id="gallery",
                elem_classes=["pixelated"],
            )
            with gr.Accordion("Native resolution", open=False):
                originals = gr.Gallery(
                    label="Originals", format="png", columns=8, elem_id="originals", elem_classes=["pixelated"]
                )

    inputs = [prompt, model, seed, steps, guidance, batch, backend]
    outputs = [preview, gallery, originals, info]
    if handlers.batcher is None:
        queue = dict(concurrency_limit=settings.gpu_concurrency, concurrency_id="gpu")
    else:  # requests must reach the batcher together to be merged; its one worker still samples one batch at a time
        queue = dict(concurrency_limit=settings.image_concurrency, concurrency_id="image-batch")
    run = dict(fn=handlers.generate, inputs=inputs, outputs=outputs, **queue)
    button.click(api_name="generate", **run)
    prompt.submit(api_visibility="private", **run)
    dice.click(ImageHandlers.random_seed, outputs=seed, api_visibility="private", queue=False)
    model.change(handlers.select_model, inputs=model, outputs=[steps, guidance], api_visibility="private", queue=False)
    return ImageTab(handlers, model)
