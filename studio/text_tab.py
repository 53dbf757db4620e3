"""Text tab: a masked-diffusion LM fills in its answer canvas live, one decoding step at a time.

Every answer token is a coloured box: grey ▒ while still masked, then coloured by the step that committed it
(early steps dark blue, late ones yellow), so the order in which the decoder filled the canvas stays visible:
a fixed-steps teacher commits a few tokens per step, the distilled student whole spans at once.

`TextHandlers` holds the event functions (plain Python, tested directly); `build` lays out the widgets and wires
them. Handlers raise `gr.Error` with the engine's own message for any bad input; the canvas is built from
escaped token text only.
"""

from __future__ import annotations

import functools
import html
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import gradio as gr

from engines.errors import CheckpointError, InvalidRequest
from engines.requests import REMASKING, TextRequest
from engines.results import Result
from studio.errors import user_errors
from studio.gpu import gpu
from studio.pickers import random_seed, refreshed_picker

if TYPE_CHECKING:
    from engines.card import ModelCard
    from engines.registry import Registry
    from engines.text_decoding import DecodeConfig
    from studio.app import StudioSettings
    from trainer.worlds.textworld import TextExample

FIXED, THRESHOLD = "fixed steps", "confidence threshold"
MODES = (FIXED, THRESHOLD)
DEFAULT_THRESHOLD = 0.9  # Fast-dLLM's usual choice, for cards that ship fixed-steps decoding
MASK, EOS = "[MASK]", "[EOS]"
NO_CACHE = "no-cache"  # what the GPU stream yields when a ticked KV cache had to be dropped
# Viridis, sampled: dark blue (first step) to yellow (last); readable on white and distinguishable in grey scale.
RAMP = ("#440154", "#3b528b", "#21918c", "#5ec962", "#fde725")
MASKED_STYLE = "background:#d4d4d8;color:#71717a"
TOKEN_STYLE = (
    "display:inline-block;white-space:pre;min-width:0.9em;padding:1px 3px;border-radius:3px;"
    "font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:14px;line-height:1.5"
)
BLOCK_RULE = '<span class="block-rule" title="block boundary" style="width:2px;align-self:stretch;background:#a1a1aa"></span>'
NO_MODEL = "no text model is selected; add a text checkpoint directory and press refresh on the Models tab"


# ---------------------------------------------------------------------- model picker
def decoding(card: ModelCard) -> dict[str, Any]:
    """The card's shipped decoder settings (what the engine falls back on), with the engine's defaults filled in."""
    from engines.text import EXTERNAL_DECODING

    return {**EXTERNAL_DECODING, "threshold": None, "remasking": "low_confidence", **card.decoding}


def decoder_summary(settings: dict[str, Any]) -> str:
    mode = f"threshold {settings['threshold']:g}" if settings.get("threshold") else f"{settings.get('steps')} steps"
    return mode + (" + KV cache" if settings.get("use_cache") else "")


def model_label(card: ModelCard) -> str:
    """What the picker shows: id, role and the shipped decoder, so a 48-step teacher and its student stand apart."""
    return f"{card.id} · {card.role} · {card.method} · {decoder_summary(decoding(card))}"


def model_choices(registry: Registry) -> list[tuple[str, str]]:
    """(label, id) pairs for the text models: students first (as `Registry.default` picks), then teachers."""
    cards = sorted(registry.cards("text"), key=lambda c: (c.role != "student", c.default_steps, c.id))
    return [(model_label(c), c.id) for c in cards]


def default_model(registry: Registry) -> ModelCard | None:
    try:
        return registry.default("text")
    except CheckpointError:
        return None


def cache_supported(registry: Registry, card: ModelCard) -> bool:
    """Whether the model has the block-wise KV cache, without loading it when it is not loaded yet:
    a loaded engine answers itself; otherwise our own masked-diffusion LMs (config.json model_type) have it."""
    if (card.id, "torch") in registry.loaded():
        return bool(registry.engine(card.id).supports_cache)
    from engines.dllm import MODEL_TYPE

    try:
        config = json.loads((card.path / "config.json").read_text()) if card.path else {}
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and config.get("model_type") == MODEL_TYPE


@dataclass(frozen=True)
class Defaults:
    """The widgets' values for one model (or none)."""

    gen_length: int | None = None
    block_length: int | None = None
    mode: str = FIXED
    steps: int | None = None
    threshold: float = DEFAULT_THRESHOLD
    use_cache: bool = False
    cache_supported: bool = False
    remasking: str = "low_confidence"
    info: str = "no model selected"


def defaults_for(registry: Registry, card: ModelCard | None) -> Defaults:
    if card is None:
        return Defaults()
    settings = decoding(card)
    supported = cache_supported(registry, card)
    threshold = settings.get("threshold")
    return Defaults(
        gen_length=int(settings["gen_length"]),
        block_length=int(settings["block_length"]),
        mode=THRESHOLD if threshold else FIXED,
        steps=int(settings.get("steps") or card.default_steps),
        threshold=float(threshold or DEFAULT_THRESHOLD),
        use_cache=bool(settings.get("use_cache")) and supported,
        cache_supported=supported,
        remasking=settings["remasking"] if settings.get("remasking") in REMASKING else "low_confidence",
        info=f"model default: {decoder_summary(settings)}",
    )


# ---------------------------------------------------------------------- the canvas
def _mix(a: str, b: str, t: float) -> str:
    ca, cb = (tuple(int(c[i : i + 2], 16) for i in (1, 3, 5)) for c in (a, b))
    return "#" + "".join(f"{round(x + (y - x) * t):02x}" for x, y in zip(ca, cb))


def step_colour(step: int, total: int) -> tuple[str, str]:
    """(background, text colour) for a token committed at `step` of `total` (1-based): the ramp from first to last."""
    t = 0.0 if total <= 1 else min(max((step - 1) / (total - 1), 0.0), 1.0)
    position = t * (len(RAMP) - 1)
    i = min(int(position), len(RAMP) - 2)
    background = _mix(RAMP[i], RAMP[i + 1], position - i)
    r, g, b = (int(background[k : k + 2], 16) for k in (1, 3, 5))
    light = 0.2126 * r + 0.7152 * g + 0.0722 * b > 140  # relative luminance: dark text on the yellow-green end
    return background, "#111111" if light else "#ffffff"


def visible(token: str) -> str:
    """A token's text with whitespace-only tokens and control bytes made visible (an undertrained model emits them)."""
    if not token:
        return "∅"
    if not token.strip():
        return token.replace(" ", "␣").replace("\n", "↵").replace("\t", "⇥")
    return "".join(c if c.isprintable() or c == " " else f"\\x{ord(c):02x}" for c in token)


def token_span(token: str, step: int, total: int) -> str:
    """One answer position: a grey ▒ while masked, else the (escaped) token on its step's colour."""
    if step < 0 or token == MASK:
        return f'<span class="tok masked" title="masked" style="{TOKEN_STYLE};{MASKED_STYLE}">▒</span>'
    background, colour = step_colour(step, total)
    title = "given" if step == 0 else f"step {step}"
    text, extra = html.escape(visible(token)), ""
    if token == EOS:  # end of answer: shown small, so trailing [EOS] padding does not drown the answer
        text, extra, title = "eos", ";font-size:10px;opacity:0.75", f"{title} · [EOS] (end of answer)"
    style = f"{TOKEN_STYLE};background:{background};color:{colour}{extra}"
    return f'<span class="tok done" data-step="{step}" title="{html.escape(title)}" style="{style}">{text}</span>'


def legend_html(total: int) -> str:
    stops = ", ".join(RAMP)
    return (
        '<div class="canvas-legend" style="display:flex;align-items:center;gap:8px;margin-top:8px;font-size:12px;color:#52525b">'
        f'<span style="{TOKEN_STYLE};{MASKED_STYLE};font-size:12px">▒</span><span>masked</span>'
        '<span style="margin-left:12px">committed at step</span><span>1</span>'
        '<span style="display:inline-block;width:160px;height:12px;border-radius:3px;'
        f'background:linear-gradient(to right, {stops})"></span>'
        f"<span>{max(total, 1)}</span></div>"
    )


def canvas_html(canvas: Sequence[str], committed_step: Sequence[int], total_steps: int, block_length: int | None = None) -> str:
    """The answer canvas as HTML: one span per token, a thin rule between semi-autoregressive blocks, a legend.

    canvas: the engine's display strings ("[MASK]" where masked); committed_step: the step that committed each
    token (-1: masked, 0: given); total_steps: the step that maps to the end of the colour ramp.
    """
    if len(canvas) != len(committed_step):
        raise ValueError(f"canvas has {len(canvas)} tokens but committed_step {len(committed_step)} entries")
    parts = []
    for i, (token, step) in enumerate(zip(canvas, committed_step)):
        if block_length and i and i % block_length == 0:
            parts.append(BLOCK_RULE)
        parts.append(token_span(token, int(step), total_steps))
    masked = sum(1 for step in committed_step if step < 0)
    summary = f"Answer canvas · {len(canvas) - masked}/{len(canvas)} tokens committed"
    return (
        f'<div class="text-canvas" data-masked="{masked}" data-tokens="{len(canvas)}">'
        f'<div style="font-size:12px;color:#52525b;margin-bottom:4px">{summary}</div>'
        f'<div class="tokens" style="display:flex;flex-wrap:wrap;gap:3px">{"".join(parts)}</div>'
        f"{legend_html(total_steps)}</div>"
    )


EMPTY_CANVAS = (
    '<div class="text-canvas" style="color:#71717a">Press <b>Generate</b>: the answer canvas fills in here, step by step.</div>'
)


# ---------------------------------------------------------------------- examples and the stats line
@functools.lru_cache(maxsize=1)
def examples() -> tuple[TextExample, ...]:
    """Two held-out problems of each judged family of the text world (never trained on)."""
    from trainer.worlds.textworld import eval_examples

    return tuple(eval_examples(8))


def verdict(prompt: str, answer: str) -> str:
    """For an example prompt: the world's judge on the answer (expected final vs what came out)."""
    from trainer.worlds.textworld import extract_answer, judge

    example = next((e for e in examples() if e.prompt == prompt.strip()), None)
    if example is None:
        return ""
    passed = judge([answer], [example])["overall"] == 1.0
    got = extract_answer(answer)
    outcome = "✅ correct" if passed else f"❌ got {html.escape(repr(got)) if got is not None else 'no #### answer'}"
    return f"  \n**judge ({example.family})** expected `{example.final}` · {outcome}"


def decoder_text(config: DecodeConfig) -> str:
    mode = f"threshold {config.threshold:g}" if config.threshold is not None else f"{config.steps} fixed steps"
    cache = "KV cache" if config.use_cache else "no cache"
    return f"{mode}, blocks of {config.block_length}, {config.remasking}, {cache}"


def stats_line(result: Result, card: ModelCard, config: DecodeConfig, device: str) -> str:
    t = result.timings
    tokens = len(result.canvas)
    rate = tokens / (t.run_ms / 1000) if t.run_ms > 0 else float("inf")
    load = f" · **load** {t.load_ms:.0f} ms" if t.load_ms else ""
    return (
        f"**NFE** {t.nfe} · **steps** {result.total_steps} · **latency** {t.run_ms:.1f} ms · "
        f"**tokens/s** {rate:.0f} ({tokens} canvas tokens){load} · **seed** {result.seed}  \n"
        f"**decoder** {decoder_text(config)} · **model** `{result.model_id}` ({card.role}, {card.method}) · **device** {device}"
    )


# ---------------------------------------------------------------------- handlers
class TextHandlers:
    """The Text tab's event functions, bound to one registry and the studio settings."""

    def __init__(self, registry: Registry, settings: StudioSettings) -> None:
        self.registry = registry
        self.settings = settings
        self.generate = user_errors(self._generate)
        self.select_model = user_errors(self._select_model)

        def stream(model_id: str, request: TextRequest) -> Iterator[Any]:
            """The resolved decoder settings first (NO_CACHE before them if the ticked cache was dropped), then
            every Result. Only the model id and request cross into the GPU worker; the registry is the closure's."""
            engine = registry.engine(model_id)
            if request.use_cache and not engine.supports_cache:
                request = replace(request, use_cache=False)
                yield NO_CACHE
            yield engine.decode_config(request)
            yield from engine.stream(request)

        self._stream = gpu(stream)

    @staticmethod
    def request(prompt, gen_length, block_length, mode, steps, threshold, use_cache, remasking, seed) -> TextRequest:
        """Validate the widgets' values into a TextRequest; limits that depend on the model come later, from the engine."""
        if mode not in MODES:
            raise InvalidRequest(f"decoder must be one of: {', '.join(MODES)}; got {mode!r}")
        if mode == FIXED and steps is None:
            raise InvalidRequest(f"steps is empty: enter the number of decoding steps, or pick the {THRESHOLD} decoder")
        return TextRequest(
            prompt=prompt,
            gen_length=gen_length,
            block_length=block_length,
            steps=steps if mode == FIXED else None,
            threshold=threshold if mode == THRESHOLD else None,
            remasking=remasking or "low_confidence",
            use_cache=bool(use_cache),
            seed=seed,
        )

    def _generate(self, prompt, model_id, gen_length, block_length, mode, steps, threshold, use_cache, remasking, seed):
        """Yield (canvas HTML, answer, stats) after every decoding step; the answer appears when decoding ends."""
        request = self.request(prompt, gen_length, block_length, mode, steps, threshold, use_cache, remasking, seed)
        if not model_id:
            raise CheckpointError(NO_MODEL)
        card = self.registry.card(model_id)
        config = None
        for item in self._stream(model_id, request):
            if isinstance(item, str):  # NO_CACHE
                gr.Warning(f"{model_id} has no block-wise KV cache; decoding without it.")
                continue
            if not isinstance(item, Result):
                config = item  # the engine's resolved DecodeConfig
                continue
            result = item
            if not result.final:
                # Adaptive decoding knows only an upper bound on its steps while it runs: the colours span that
                # bound until the end, then the real count.
                total = result.total_steps
                bound = "≤ " if config is not None and config.threshold is not None else ""
                stats = f"Decoding… step {result.step}/{bound}{total} · NFE {result.timings.nfe} · seed {result.seed}"
                yield canvas_html(result.canvas, result.committed_step, total, config and config.block_length), "", stats
                continue
            html_ = canvas_html(result.canvas, result.committed_step, result.total_steps, config and config.block_length)
            stats = stats_line(result, card, config, str(self.registry.device)) + verdict(request.prompt, result.text)
            yield html_, result.text, stats

    def _select_model(self, model_id):
        """New defaults for every decoder widget when the model changes (the KV cache box only where supported)."""
        d = defaults_for(self.registry, self.registry.card(model_id) if model_id else None)
        cache_info = "prompt and finished blocks reused (Fast-dLLM)" if d.cache_supported else "this model has no KV cache"
        return (
            gr.update(value=d.gen_length, info=d.info),
            gr.update(value=d.block_length),
            gr.update(value=d.mode),
            gr.update(value=d.steps, visible=d.mode == FIXED),
            gr.update(value=d.threshold, visible=d.mode == THRESHOLD),
            gr.update(value=d.use_cache, interactive=d.cache_supported, info=cache_info),
            gr.update(value=d.remasking),
        )

    @staticmethod
    def select_mode(mode):
        """Show the steps box for fixed-steps decoding, the threshold slider for confidence-adaptive decoding."""
        return gr.update(visible=mode != THRESHOLD), gr.update(visible=mode == THRESHOLD)

    def refresh_models(self, current: str | None = None):
        """Dropdown choices after a registry refresh; keeps the selection when that model is still there."""
        card = default_model(self.registry)
        return refreshed_picker(model_choices(self.registry), current, card.id if card else None)

    random_seed = staticmethod(random_seed)


@dataclass
class TextTab:
    handlers: TextHandlers
    model: gr.Dropdown


def build(registry: Registry, settings: StudioSettings) -> TextTab:
    """Lay out the Text tab inside the current Blocks context and wire its events."""
    handlers = TextHandlers(registry, settings)
    card = default_model(registry)
    d = defaults_for(registry, card)
    if card is None:
        gr.Markdown(
            "**No text checkpoints found.** Train one (`python -m trainer train configs/text-teacher.yaml`, then "
            "`configs/text-cd4lm.yaml` for its student), start the studio with `--checkpoints DIR`, then press refresh "
            "on the Models tab."
        )
    prompts = [e.prompt for e in examples()]
    with gr.Row():
        with gr.Column(scale=2):
            prompt = gr.Textbox(label="Prompt", placeholder=prompts[0], lines=3, elem_id="text-prompt")
            model = gr.Dropdown(
                model_choices(registry), value=card.id if card else None, label="Model (teacher or student)", elem_id="text-model"
            )
            with gr.Row():
                gen_length = gr.Number(
                    value=d.gen_length, label="Generation length", precision=0, info=d.info, elem_id="text-gen-length"
                )
                block_length = gr.Number(
                    value=d.block_length,
                    label="Block length",
                    precision=0,
                    info="must divide the generation length",
                    elem_id="text-block-length",
                )
            mode = gr.Radio(list(MODES), value=d.mode, label="Decoder", elem_id="text-mode")
            steps = gr.Number(
                value=d.steps,
                label="Steps",
                precision=0,
                info="a multiple of the number of blocks, at most the generation length",
                visible=d.mode == FIXED,
                elem_id="text-steps",
            )
            threshold = gr.Slider(
                0.0,
                1.0,
                step=0.01,
                value=d.threshold,
                label="Confidence threshold",
                info="commit every token above it (at least one per step); in (0, 1]",
                visible=d.mode == THRESHOLD,
                elem_id="text-threshold",
            )
            with gr.Row():
                use_cache = gr.Checkbox(
                    value=d.use_cache,
                    label="Block-wise KV cache",
                    interactive=d.cache_supported,
                    info="prompt and finished blocks reused (Fast-dLLM)" if d.cache_supported else "this model has no KV cache",
                    elem_id="text-cache",
                )
                remasking = gr.Radio(list(REMASKING), value=d.remasking, label="Remasking", elem_id="text-remasking")
            with gr.Row():
                seed = gr.Number(value=0, label="Seed", precision=0, elem_id="text-seed", scale=3)
                dice = gr.Button("🎲 randomise", elem_id="text-randomise", scale=1, min_width=80)
            with gr.Row():
                button = gr.Button("Generate", variant="primary", elem_id="text-generate")
                stop = gr.Button("Stop", variant="stop", elem_id="text-stop")
            gr.Examples([[p] for p in prompts], inputs=[prompt], label="Example problems (held out from training)")
        with gr.Column(scale=3):
            canvas = gr.HTML(EMPTY_CANVAS, label="Canvas", elem_id="text-canvas")
            answer = gr.Textbox(label="Answer", lines=3, interactive=False, elem_id="text-answer")
            stats = gr.Markdown("NFE, steps, latency and tokens/s show up here.", elem_id="text-stats")

    inputs = [prompt, model, gen_length, block_length, mode, steps, threshold, use_cache, remasking, seed]
    outputs = [canvas, answer, stats]
    run = dict(
        fn=handlers.generate, inputs=inputs, outputs=outputs, concurrency_limit=settings.gpu_concurrency, concurrency_id="gpu"
    )
    events = [button.click(api_name="generate_text", **run), prompt.submit(api_visibility="private", **run)]
    stop.click(None, cancels=events, api_visibility="private", queue=False)
    dice.click(TextHandlers.random_seed, outputs=seed, api_visibility="private", queue=False)
    mode.change(TextHandlers.select_mode, inputs=mode, outputs=[steps, threshold], api_visibility="private", queue=False)
    model.change(
        handlers.select_model,
        inputs=model,
        outputs=[gen_length, block_length, mode, steps, threshold, use_cache, remasking],
        api_visibility="private",
        queue=False,
    )
    return TextTab(handlers, model)
