"""The Distillery studio: one Gradio Blocks app over an engines `Registry`.

`build_ui` only lays out widgets; models load on first use, in the registry's bounded cache.
"""

from __future__ import annotations

import hmac
import logging
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import gradio as gr

from studio import compare_tab, image_tab, models_tab, text_tab, video_tab
from studio.batching import BatchSettings

if TYPE_CHECKING:
    from engines.registry import Registry

log = logging.getLogger("studio")

CSS = """
.pixelated img, #preview img, #video-frame img, #video-clip video { image-rendering: pixelated; }
"""


def _env_on(name: str) -> bool:
    return os.environ.get(name, "1").strip().lower() not in ("0", "false", "no", "off")


@dataclass
class StudioSettings:
    host: str = "127.0.0.1"
    port: int = 7860
    share: bool = False
    device: str = "auto"  # auto | cpu | cuda
    checkpoints: list[str] = field(default_factory=list)  # extra checkpoint directories, besides checkpoints/
    max_batch: int = 8  # largest batch the Image tab offers and accepts
    gpu_concurrency: int = 1  # generations running at once, across every event that shares the GPU
    # Dynamic batching of Image-tab requests (studio/batching.py): the oldest waiting request waits up to this long for
    # others with the same model, backend, steps and guidance to join it in one batched call; 0 = off (each request
    # samples alone in the shared `gpu` queue). Requests that queued while a batch ran join the next one at once.
    batch_window_ms: float = BatchSettings.window_ms
    max_batch_images: int = BatchSettings.max_images  # the most images one batched call samples (a larger request runs alone)
    video_streams: int = 4  # live video streams running at once (each user streams in a thread of its own)
    video_display_fps: float = 20.0  # the most frames a second the Video tab sends each viewer; newer frames win
    queue_size: int = 64  # waiting requests beyond which new ones are turned away
    cache_size: int = 2  # loaded engines kept in memory
    display_px: int = 256  # images are shown upscaled (nearest neighbour) to about this size
    # Gradio writes every image an event returns into its cache, and a live video stream returns ~20 a second per
    # viewer: files older than this are deleted (every half of it), so an endless stream cannot fill the disk.
    cache_max_age_s: int | None = 3600
    # Train tab: public deployments turn it off (DISTILLERY_TRAIN_TAB=0 or --no-train-tab); a shared secret
    # (DISTILLERY_TRAIN_SECRET) puts Gradio auth in front of the studio while it is on.
    train_tab: bool = field(default_factory=lambda: _env_on("DISTILLERY_TRAIN_TAB"))
    train_secret: str | None = field(default_factory=lambda: os.environ.get("DISTILLERY_TRAIN_SECRET") or None)
    data_dir: str | None = None  # job store, runs and published students; None: $DISTILLERY_DATA_DIR or ~/.distillery

    def __post_init__(self) -> None:
        BatchSettings(self.batch_window_ms, self.max_batch_images)  # raises ValueError saying what is allowed

    @property
    def batching(self) -> bool:
        return self.batch_window_ms > 0

    @property
    def image_concurrency(self) -> int:
        """Image-tab generations admitted at once: with batching, enough to fill a batch (they wait in the batcher,
        which samples one batch at a time); without it, the shared GPU limit."""
        return self.max_batch_images if self.batching else self.gpu_concurrency


def build_registry(settings: StudioSettings) -> Registry:
    """The registry over the shipped checkpoints/ plus any extra directories."""
    from engines.registry import DEFAULT_ROOT, Registry

    return Registry([DEFAULT_ROOT, *settings.checkpoints], device=settings.device, cache_size=settings.cache_size)


def build_ui(registry: Registry, settings: StudioSettings | None = None) -> gr.Blocks:
    settings = settings or StudioSettings()
    age = settings.cache_max_age_s
    with gr.Blocks(title="Distillery studio", delete_cache=(max(age // 2, 1), age) if age else None) as demo:
        gr.Markdown(
            "# Distillery studio\n"
            f"Distilled few-step generators, live. Running on **{registry.device}**; "
            "the preview shows the model's current estimate at every denoising step."
        )
        with gr.Tabs():
            with gr.Tab("Image", id="image"):
                image = image_tab.build(registry, settings)
            with gr.Tab("Text", id="text"):
                text = text_tab.build(registry, settings)
            with gr.Tab("Video", id="video"):
                video = video_tab.build(registry, settings)
            with gr.Tab("Compare", id="compare"):
                compare = compare_tab.build(registry, settings)
            with gr.Tab("Models", id="models"):
                models = models_tab.build(registry)
            if settings.train_tab:
                from studio import train_tab

                with gr.Tab("Train", id="train"):
                    train = train_tab.build(registry, settings)

        def refresh_pickers(event) -> None:
            """After `event`, the Image, Text, Video and Compare tabs' pickers list the registry's models again."""
            event.then(image.handlers.refresh_models, inputs=image.model, outputs=image.model, api_visibility="private").then(
                text.handlers.refresh_models, inputs=text.model, outputs=text.model, api_visibility="private"
            ).then(video.handlers.refresh_models, inputs=video.model, outputs=video.model, api_visibility="private").then(
                compare.handlers.refresh_models,
                inputs=[compare.teacher, compare.student],
                outputs=[compare.teacher, compare.student],
                api_visibility="private",
            )

        refresh_pickers(models.refresh_event)  # new or removed checkpoints
        if settings.train_tab:
            refresh_pickers(train.published_event)  # a published student
    demo.queue(max_size=settings.queue_size)
    return demo


def launch(demo: gr.Blocks, settings: StudioSettings, **overrides):
    """Start the server with the studio's settings (and its CSS); `overrides` go to `Blocks.launch`."""
    options = dict(server_name=settings.host, server_port=settings.port, share=settings.share, css=CSS, show_error=True)
    # Each running event holds one of Gradio's worker threads (40 by default), batched image requests while they wait too.
    options["max_threads"] = max(40, settings.image_concurrency + settings.video_streams + 8)
    if settings.train_tab and settings.train_secret:
        secret = settings.train_secret
        # Any user name; the secret is the password, compared in constant time.
        options["auth"] = lambda _user, password: hmac.compare_digest(str(password).encode(), secret.encode())
        options["auth_message"] = "This studio can start training jobs: enter the shared secret as the password."
    return demo.launch(**{**options, **overrides})
