"""The Distillery studio: one Gradio Blocks app over an engines `Registry`.

`build_ui` only lays out widgets; models load on first use, in the registry's bounded cache.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import gradio as gr

from studio import compare_tab, image_tab, models_tab

if TYPE_CHECKING:
    from engines.registry import Registry

log = logging.getLogger("studio")

CSS = """
.pixelated img, #preview img { image-rendering: pixelated; }
"""


@dataclass
class StudioSettings:
    host: str = "127.0.0.1"
    port: int = 7860
    share: bool = False
    device: str = "auto"  # auto | cpu | cuda
    checkpoints: list[str] = field(default_factory=list)  # extra checkpoint directories, besides checkpoints/
    max_batch: int = 8  # largest batch the Image tab offers and accepts
    gpu_concurrency: int = 1  # generations running at once, across every event that shares the GPU
    queue_size: int = 64  # waiting requests beyond which new ones are turned away
    cache_size: int = 2  # loaded engines kept in memory
    display_px: int = 256  # images are shown upscaled (nearest neighbour) to about this size


def build_registry(settings: StudioSettings) -> Registry:
    """The registry over the shipped checkpoints/ plus any extra directories."""
    from engines.registry import DEFAULT_ROOT, Registry

    return Registry([DEFAULT_ROOT, *settings.checkpoints], device=settings.device, cache_size=settings.cache_size)


def build_ui(registry: Registry, settings: StudioSettings | None = None) -> gr.Blocks:
    settings = settings or StudioSettings()
    with gr.Blocks(title="Distillery studio") as demo:
        gr.Markdown(
            "# Distillery studio\n"
            f"Distilled few-step generators, live. Running on **{registry.device}**; "
            "the preview shows the model's current estimate at every denoising step."
        )
        with gr.Tabs():
            with gr.Tab("Image", id="image"):
                image = image_tab.build(registry, settings)
            with gr.Tab("Compare", id="compare"):
                compare = compare_tab.build(registry, settings)
            with gr.Tab("Models", id="models"):
                models = models_tab.build(registry)
        # New or removed checkpoints show up in the Image and Compare tabs' pickers too.
        models.refresh_event.then(
            image.handlers.refresh_models, inputs=image.model, outputs=image.model, api_visibility="private"
        ).then(
            compare.handlers.refresh_models,
            inputs=[compare.teacher, compare.student],
            outputs=[compare.teacher, compare.student],
            api_visibility="private",
        )
    demo.queue(max_size=settings.queue_size)
    return demo


def launch(demo: gr.Blocks, settings: StudioSettings, **overrides):
    """Start the server with the studio's settings (and its CSS); `overrides` go to `Blocks.launch`."""
    options = dict(server_name=settings.host, server_port=settings.port, share=settings.share, css=CSS, show_error=True)
    return demo.launch(**{**options, **overrides})
