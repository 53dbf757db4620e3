"""The Text tab's pure functions and handlers on the tiny text teacher and student: the canvas HTML (masks, step
colours, escaping), streaming, defaults from the cards, and every bad input as a clear message."""

import re
from html.parser import HTMLParser

import gradio as gr
import pytest

from studio.app import StudioSettings, build_ui
from studio.text_tab import (
    FIXED,
    NO_MODEL,
    RAMP,
    THRESHOLD,
    TextHandlers,
    cache_supported,
    canvas_html,
    defaults_for,
    examples,
    model_choices,
    step_colour,
    verdict,
)

pytestmark = pytest.mark.usefixtures("torch_one_thread")
TEACHER, STUDENT = "tiny-text", "tiny-text-cd4lm"
PROMPT = "Sort these numbers from smallest to largest: 41, 7, 23, 15"


class Spans(HTMLParser):
    """The token spans of a canvas: (classes, attributes, text)."""

    def __init__(self, markup: str) -> None:
        super().__init__()
        self.spans: list[dict] = []
        self._open: dict | None = None
        self.feed(markup)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "span" and "tok" in (attrs.get("class") or "").split():
            self._open = {"class": attrs["class"].split(), "attrs": attrs, "text": ""}
            self.spans.append(self._open)

    def handle_endtag(self, tag):
        if tag == "span":
            self._open = None

    def handle_data(self, data):
        if self._open is not None:
            self._open["text"] += data


def background(span: dict) -> str:
    return re.search(r"background:(#[0-9a-f]{6})", span["attrs"]["style"]).group(1)


@pytest.fixture(scope="module")
def handlers(text_registry):
    return TextHandlers(text_registry, StudioSettings(device="cpu"))


def run(
    handlers,
    prompt=PROMPT,
    model=TEACHER,
    gen_length=16,
    block_length=8,
    mode=FIXED,
    steps=8,
    threshold=0.9,
    use_cache=False,
    remasking="low_confidence",
    seed=3,
):
    return list(handlers.generate(prompt, model, gen_length, block_length, mode, steps, threshold, use_cache, remasking, seed))


# ---------------------------------------------------------------------- canvas HTML
def test_canvas_shows_masks_as_grey_blocks_and_colours_tokens_by_step():
    canvas = ("Tom", " has", "[MASK]", "[MASK]", "[EOS]", "[EOS]")
    steps = (1, 4, -1, -1, 2, 4)
    markup = canvas_html(canvas, steps, total_steps=4, block_length=3)
    spans = Spans(markup).spans
    assert len(spans) == 6
    masked = [s for s in spans if "masked" in s["class"]]
    assert [s["text"] for s in masked] == ["▒", "▒"] and all("#d4d4d8" in s["attrs"]["style"] for s in masked)
    done = [s for s in spans if "done" in s["class"]]
    assert [s["text"] for s in done] == ["Tom", " has", "eos", "eos"]  # spaces kept, [EOS] shown small
    assert [s["attrs"]["data-step"] for s in done] == ["1", "4", "2", "4"]
    assert background(done[0]) == RAMP[0] and background(done[1]) == RAMP[-1]  # first step → start, last → end
    assert background(done[1]) == background(done[3])  # same step, same colour
    assert 'data-masked="2"' in markup and "4/6 tokens committed" in markup
    assert markup.count('class="block-rule"') == 1  # one boundary between the two blocks of 3
    assert "canvas-legend" in markup and "masked" in markup and "<span>4</span>" in markup  # ramp from step 1 to 4


def test_a_finished_canvas_has_no_masks():
    markup = canvas_html(("a", "b", "c"), (1, 2, 3), total_steps=3)
    assert 'data-masked="0"' in markup and "▒</span>" not in markup.split("canvas-legend")[0]
    assert "block-rule" not in markup  # no block length: no rules


def test_step_colours_run_from_the_start_to_the_end_of_the_ramp():
    colours = [step_colour(step, 9)[0] for step in range(1, 10)]
    assert colours[0] == RAMP[0] and colours[-1] == RAMP[-1] and colours[4] == RAMP[2]
    assert len(set(colours)) == 9  # every step distinguishable
    assert step_colour(1, 1)[0] == RAMP[0] and step_colour(50, 10)[0] == RAMP[-1]  # clamped
    assert step_colour(1, 5)[1] == "#ffffff" and step_colour(5, 5)[1] == "#111111"  # readable text on dark and light


def test_token_text_is_escaped():
    evil = '<script>alert("x")</script>'
    markup = canvas_html((evil, "a&b", "\x03", " "), (1, 1, 1, 1), total_steps=1)
    assert "<script>" not in markup and "&lt;script&gt;" in markup and "a&amp;b" in markup
    texts = [s["text"] for s in Spans(markup).spans]
    assert texts == [evil, "a&b", "\\x03", "␣"]  # control bytes and bare spaces made visible


def test_canvas_length_mismatch_is_an_error():
    with pytest.raises(ValueError, match="canvas has 2 tokens but committed_step 1"):
        canvas_html(("a", "b"), (1,), total_steps=1)


# ---------------------------------------------------------------------- pickers and defaults
def test_models_are_listed_with_their_role_and_decoder(text_registry):
    choices = model_choices(text_registry)
    assert [model_id for _, model_id in choices] == [STUDENT, TEACHER]  # the student first, as Registry.default
    labels = dict((model_id, label) for label, model_id in choices)
    assert labels[STUDENT] == f"{STUDENT} · student · cd4lm · threshold 0.5 + KV cache"
    assert labels[TEACHER] == f"{TEACHER} · teacher · mdlm · 48 steps"


def test_defaults_come_from_the_card(text_registry, handlers):
    student = defaults_for(text_registry, text_registry.card(STUDENT))
    assert (student.mode, student.threshold, student.gen_length, student.block_length) == (THRESHOLD, 0.5, 48, 16)
    teacher = defaults_for(text_registry, text_registry.card(TEACHER))
    assert (teacher.mode, teacher.steps, teacher.threshold) == (FIXED, 48, 0.9)  # the slider's fallback
    gen, block, mode, steps, threshold, cache, remasking = handlers.select_model(TEACHER)
    assert (gen["value"], block["value"], mode["value"], steps["value"]) == (48, 16, FIXED, 48)
    assert steps["visible"] and not threshold["visible"] and remasking["value"] == "low_confidence"
    assert cache["interactive"] == cache_supported(text_registry, text_registry.card(TEACHER))
    assert TextHandlers.select_mode(THRESHOLD) == (gr.update(visible=False), gr.update(visible=True))
    assert handlers.refresh_models(TEACHER)["value"] == TEACHER
    assert handlers.refresh_models("gone")["value"] == STUDENT


def test_cache_support_is_known_before_loading(tmp_path, tiny_text_root):
    import shutil

    from engines.registry import Registry

    shutil.copytree(tiny_text_root / TEACHER, tmp_path / TEACHER)
    registry = Registry([tmp_path], device="cpu")
    assert cache_supported(registry, registry.card(TEACHER))  # our own masked-diffusion LM, read from config.json
    assert registry.loaded() == []  # and nothing was loaded to find out


# ---------------------------------------------------------------------- generation
def test_fixed_steps_stream_the_canvas_then_the_answer(handlers):
    outputs = run(handlers, gen_length=16, block_length=8, steps=8)
    assert len(outputs) == 9  # one update per step, then the final one
    committed = []
    for markup, answer, stats in outputs[:-1]:
        spans = Spans(markup).spans
        assert len(spans) == 16 and answer == "" and stats.startswith("Decoding… step")
        committed.append(sum("done" in s["class"] for s in spans))
    assert committed == [2, 4, 6, 8, 10, 12, 14, 16]  # LLaDA's schedule: 16 tokens over 8 steps
    assert "masked" in Spans(outputs[0][0]).spans[-1]["class"]  # the second block waits while the first fills
    markup, answer, stats = outputs[-1]
    assert 'data-masked="0"' in markup and isinstance(answer, str)
    facts = ["**NFE** 8", "**steps** 8", "**latency**", "**tokens/s**", "(16 canvas tokens)", "**seed** 3"]
    assert [fact for fact in facts if fact not in stats] == []
    assert "8 fixed steps, blocks of 8, low_confidence" in stats and f"`{TEACHER}` (teacher, mdlm)" in stats
    assert run(handlers, gen_length=16, block_length=8, steps=8)[-1][:2] == outputs[-1][:2]  # same seed, same canvas


def test_threshold_decoding_commits_by_confidence(handlers):
    outputs = run(handlers, model=TEACHER, gen_length=8, block_length=8, mode=THRESHOLD, steps=None, threshold=1.0)
    *_, stats = outputs[-1]
    assert "**NFE** 8 · **steps** 8" in stats  # nothing beats confidence 1.0: exactly one token per step
    assert "threshold 1, blocks of 8" in stats and "(teacher, mdlm)" in stats
    assert "step 1/≤ 8" in outputs[0][2]  # adaptive: the step count is an upper bound while it runs
    # The student's card ships eos-fill: once it commits [EOS], the rest of the answer costs no calls.
    *_, stats = run(handlers, model=STUDENT, gen_length=8, block_length=8, mode=THRESHOLD, steps=None, threshold=1.0)[-1]
    nfe = int(stats.split("**NFE** ")[1].split(" ")[0])
    assert 1 <= nfe <= 8 and "(student, cd4lm)" in stats


def test_a_dropped_kv_cache_is_a_warning_not_an_error(text_registry, monkeypatch):
    engine = text_registry.engine(TEACHER)
    monkeypatch.setattr(type(engine), "supports_cache", property(lambda self: False))
    handlers = TextHandlers(text_registry, StudioSettings(device="cpu"))
    with pytest.warns(UserWarning, match="has no block-wise KV cache; decoding without it"):
        outputs = run(handlers, gen_length=8, block_length=8, steps=4, use_cache=True)
    assert "no cache" in outputs[-1][2]
    assert not handlers.select_model(TEACHER)[5]["interactive"]  # the box is greyed out once the engine says so


def test_example_prompts_come_from_the_text_world_and_are_judged():
    found = examples()
    assert len(found) == 8 and {e.family for e in found} == {"arithmetic", "sorting", "reversal", "logic"}
    right, wrong = found[0], found[1]
    assert "✅ correct" in verdict(right.prompt, right.answer) and f"expected `{right.final}`" in verdict(right.prompt, "")
    assert "❌" in verdict(wrong.prompt, "#### nope") and "no #### answer" in verdict(wrong.prompt, "")
    assert verdict("not an example", "#### 3") == ""


# ---------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"prompt": ""}, "prompt is empty"),
        ({"prompt": "   "}, "prompt is empty"),
        ({"prompt": "7 " * 60}, "tokens long; tiny-text reads at most 46. Shorten it."),
        ({"prompt": "x" * 2000}, "prompt is 2000 characters long; the limit is 1000"),
        ({"gen_length": 0}, "generation length must be from 1 to 1024, got 0"),
        ({"gen_length": 64, "block_length": 16}, "generation length 64 is beyond the model's context"),
        ({"gen_length": 5000}, "generation length must be from 1 to 1024, got 5000"),
        ({"gen_length": 16, "block_length": 5}, "block length 5 does not divide the generation length 16"),
        ({"block_length": 0}, "block length must be from 1 to 1024, got 0"),
        ({"mode": THRESHOLD, "threshold": 0.0}, "confidence threshold must be in (0, 1], got 0.0"),
        ({"mode": THRESHOLD, "threshold": 1.5}, "confidence threshold must be in (0, 1], got 1.5"),
        ({"mode": THRESHOLD, "threshold": -0.2}, "confidence threshold must be in (0, 1], got -0.2"),
        ({"steps": None}, "steps is empty"),
        ({"steps": 5}, "steps (5) must be a multiple of the number of blocks (2 = 16 / 8)"),
        ({"steps": 32}, "steps (32) cannot exceed the generation length (16)"),
        ({"mode": "fastest"}, "decoder must be one of"),
        ({"remasking": "sideways"}, "remasking must be one of low_confidence, random"),
        ({"seed": -1}, "seed must be from 0 to"),
        ({"model": None}, NO_MODEL),
        ({"model": "no-such-model"}, "unknown model id 'no-such-model'"),
    ],
)
def test_bad_input_is_a_clear_message_and_the_tab_keeps_working(handlers, changes, message):
    with pytest.raises(gr.Error) as caught:
        run(handlers, **changes)
    assert message in caught.value.message
    assert "Traceback" not in caught.value.message
    assert "**NFE** 4" in run(handlers, gen_length=8, block_length=8, steps=4)[-1][2]  # still serving


def test_the_studio_has_a_text_tab(text_registry, tmp_path):
    from engines.registry import Registry

    demo = build_ui(text_registry, StudioSettings(device="cpu"))
    names = {getattr(fn, "api_name", None) for fn in demo.fns.values()}
    assert "generate_text" in names
    # No text checkpoints: the tab still builds (with a note), and generating says what is missing.
    empty = Registry([tmp_path], device="cpu")
    assert isinstance(build_ui(empty, StudioSettings(device="cpu")), gr.Blocks)
    with pytest.raises(gr.Error, match="no text model is selected"):
        run(TextHandlers(empty, StudioSettings(device="cpu")), model=None)
