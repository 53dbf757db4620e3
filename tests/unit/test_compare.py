"""The Compare tab without a browser: `compare` and `race` on the tiny checkpoint, the judge's verdicts, bad input."""

import json
import random
import re
import shutil

import gradio as gr
import pytest
from PIL import Image

from engines.errors import CheckpointError, InvalidRequest
from studio.app import StudioSettings, build_ui
from studio.compare import Comparison, Side, TeacherStep, compare, engine_stream, judge_image, race
from studio.compare_tab import OUTSIDE_GRAMMAR, CompareHandlers, side_markdown, summary_markdown
from trainer.worlds import shapes as S

MODEL = "tiny-cpu"
PROMPT = "a red circle to the left of a blue square"


@pytest.fixture(scope="module")
def two_roles(tmp_path_factory, tiny_image_root):
    """A registry with the tiny teacher and the same weights posing as a 1-step student."""
    from engines.registry import Registry

    root = tmp_path_factory.mktemp("two-roles")
    shutil.copytree(tiny_image_root / MODEL, root / MODEL)
    shutil.copytree(tiny_image_root / MODEL, root / "tiny-student")
    card = json.loads((root / "tiny-student" / "card.json").read_text())
    card.update(id="tiny-student", role="student", method="dmd2", default_steps=1, teacher=MODEL)
    (root / "tiny-student" / "card.json").write_text(json.dumps(card))
    return Registry([root], device="cpu")


def test_compare_returns_both_sides_with_cost_and_verdicts(studio_registry):
    result = compare(studio_registry, PROMPT, 7, MODEL, 3, MODEL, 1)
    assert isinstance(result, Comparison)
    assert (result.prompt, result.seed, result.condition.category) == (PROMPT, 7, "position")
    resolution = studio_registry.card(MODEL).resolution
    for side, steps in ((result.teacher, 3), (result.student, 1)):
        assert isinstance(side, Side) and side.model_id == MODEL and side.role == "teacher"
        assert side.steps == steps and side.nfe == 2 * steps  # guidance 2.0: two evaluations a step
        assert side.image.size == (resolution, resolution)
        assert side.latency_ms > 0 and side.guidance == studio_registry.card(MODEL).default_guidance
        assert side.verdict.condition == result.condition and side.verdict.category == "position"
        assert isinstance(side.verdict.passed, bool) and isinstance(side.verdict.detections, tuple)
        assert side.verdict.passed or side.verdict.reason  # a fail always says why


def test_both_sides_share_the_seed(studio_registry):
    # The same model with the same steps on both sides gives the same image: one seed, one starting noise.
    result = compare(studio_registry, PROMPT, 11, MODEL, 2, MODEL, 2)
    assert result.teacher.image.tobytes() == result.student.image.tobytes()
    # No seed draws one, shared by both sides and reported back.
    drawn = compare(studio_registry, PROMPT, None, MODEL, 1, MODEL, 1)
    assert 0 <= drawn.seed < 2**31 and drawn.teacher.image.tobytes() == drawn.student.image.tobytes()


def test_empty_steps_mean_the_cards_default(studio_registry):
    result = compare(studio_registry, PROMPT, 1, MODEL, None, MODEL, None)
    assert result.teacher.steps == result.student.steps == studio_registry.card(MODEL).default_steps


def test_a_prompt_outside_the_grammar_gets_no_verdict(studio_registry):
    result = compare(studio_registry, "a photo of a cat", 3, MODEL, 1, MODEL, 1)
    assert result.condition is None and result.teacher.verdict is None and result.student.verdict is None
    assert OUTSIDE_GRAMMAR in side_markdown(result.teacher)


def test_race_yields_the_student_first_then_teacher_previews_in_order(studio_registry):
    calls = []

    def recording(model_id, request):
        calls.append(("start", request.steps))
        yield from engine_stream(studio_registry)(model_id, request)
        calls.append(("end", request.steps))

    items = list(race(studio_registry, PROMPT, 5, MODEL, 4, MODEL, 1, stream=recording))
    assert calls == [("start", 1), ("end", 1), ("start", 4), ("end", 4)]  # the student ran to its end first
    student, *previews, teacher = items
    assert isinstance(student, Side) and student.steps == 1
    assert all(isinstance(p, TeacherStep) for p in previews)
    assert [(p.step, p.total_steps) for p in previews] == [(1, 4), (2, 4), (3, 4)]
    assert [p.nfe for p in previews] == [2, 4, 6]
    elapsed = [p.elapsed_ms for p in previews]
    assert elapsed == sorted(elapsed)
    assert isinstance(teacher, Side) and teacher.steps == 4 and teacher.nfe == 8
    # The race's final teacher image is the plain comparison's.
    assert teacher.image.tobytes() == compare(studio_registry, PROMPT, 5, MODEL, 4, MODEL, 1).teacher.image.tobytes()


@pytest.mark.parametrize(
    ("changes", "error", "message"),
    [
        ({"prompt": ""}, InvalidRequest, "prompt is empty"),
        ({"prompt": "   "}, InvalidRequest, "prompt is empty"),
        ({"teacher_steps": 0}, InvalidRequest, "teacher steps must be from 1 to 1000, got 0"),
        ({"student_steps": 0}, InvalidRequest, "student steps must be from 1 to 1000, got 0"),
        ({"student_steps": 2.5}, InvalidRequest, "student steps must be a whole number"),
        ({"seed": -1}, InvalidRequest, "seed must be from 0 to"),
        ({"teacher_id": "no-such-model"}, CheckpointError, "unknown model id 'no-such-model'"),
        ({"student_id": "no-such-model"}, CheckpointError, "unknown model id 'no-such-model'"),
        ({"teacher_id": None}, CheckpointError, "no teacher model is selected"),
        ({"student_id": ""}, CheckpointError, "no student model is selected"),
    ],
)
def test_bad_input_fails_before_anything_runs(studio_registry, changes, error, message):
    args = dict(prompt=PROMPT, seed=1, teacher_id=MODEL, teacher_steps=2, student_id=MODEL, student_steps=1)
    args.update(changes)

    def never(model_id, request):
        raise AssertionError("a model ran on bad input")

    with pytest.raises(error, match=message):
        compare(studio_registry, **args, stream=never)
    with pytest.raises(error, match=message):
        next(race(studio_registry, **args, stream=never))
    # Through the tab's handlers the same message reaches the browser as a Gradio message, without a traceback.
    handlers = CompareHandlers(studio_registry, StudioSettings())
    values = list(args.values())
    for call in (lambda: handlers.compare(*values), lambda: list(handlers.race(*values))):
        with pytest.raises(gr.Error) as caught:
            call()
        assert message in caught.value.message and "Traceback" not in caught.value.message


def test_the_left_side_must_be_a_teacher(two_roles):
    with pytest.raises(InvalidRequest, match="'tiny-student' is a student, but the teacher side needs a teacher"):
        compare(two_roles, PROMPT, 1, "tiny-student", 1, MODEL, 1)
    result = compare(two_roles, PROMPT, 1, MODEL, None, "tiny-student", None)
    assert (result.teacher.steps, result.student.steps) == (4, 1)
    assert (result.student.role, result.student.method) == ("student", "dmd2")


def test_judge_passes_the_worlds_render_and_says_why_others_fail():
    scene = S.sample_scene(random.Random(3), "position")
    image = Image.fromarray(S.to_uint8(S.render([scene]))[0])
    verdict = judge_image(image, scene.condition)
    assert verdict.passed and verdict.reason == "" and len(verdict.detections) == 2
    a, b = scene.condition.specs
    swapped = S.Condition("position", (b, a), scene.condition.relation)
    assert judge_image(image, swapped).reason.startswith("the right objects, but the first is not")
    three = S.Condition("counting", (S.ObjSpec(a.shape, count=3),))
    assert judge_image(image, three).reason == "expected 3 objects, detected 2"
    blank = Image.new("RGB", (64, 64), S.BACKGROUND)
    assert judge_image(blank, scene.condition).reason == "expected 2 objects, detected 0"
    text = side_markdown(
        Side("m", "student", "dmd2", 1, 1.0, image, 3.2, 0.0, 1, verdict)  # the detected objects are listed
    )
    assert "**judge (position)** ✅ pass" in text
    assert f"{scene.objects[0].color} {scene.objects[0].size} {scene.objects[0].shape} at" in text


def test_handlers_format_both_sides(studio_registry):
    handlers = CompareHandlers(studio_registry, StudioSettings(device="cpu"))
    teacher_image, teacher_info, student_image, student_info, summary = handlers.compare(PROMPT, 7, MODEL, 2, MODEL, 1)
    assert teacher_image.size == student_image.size == (256, 256)  # 16 px shown upscaled
    assert "**latency**" in teacher_info and "**NFE** 4" in teacher_info and "**steps** 2" in teacher_info
    assert "**NFE** 2" in student_info and "**judge (position)**" in student_info and "detected:" in student_info
    assert "reads the prompt as *position*" in summary and "2 NFE against 4" in summary
    # which side was quicker is wall-clock timing on a shared CPU: only the wording is checked here
    assert re.search(r"\(\d+\.\d× (faster|slower)\)", summary)
    outside = handlers.compare("a cat", 7, MODEL, 1, MODEL, 1)[4]
    assert "no verdict: the prompt is outside the world's grammar" in outside


def test_summary_says_how_much_faster_or_slower_the_student_was():
    image = Image.new("RGB", (16, 16))
    teacher = Side("t", "teacher", "flow_matching", 25, 1.5, image, 400.0, 0.0, 50, None)
    student = Side("s", "student", "dmd2", 1, 1.0, image, 10.0, 0.0, 1, None)
    assert "(40.0× faster), 1 NFE against 50." in summary_markdown(teacher, student)
    slow = Side("s", "student", "dmd2", 1, 1.0, image, 800.0, 0.0, 1, None)
    assert "(2.0× slower)" in summary_markdown(teacher, slow)


def test_race_handler_streams_the_student_then_the_teacher(studio_registry):
    handlers = CompareHandlers(studio_registry, StudioSettings(device="cpu"))
    updates = list(handlers.race(PROMPT, 3, MODEL, 3, MODEL, 1))
    assert len(updates) == 1 + 2 + 1  # student, two teacher previews, finished teacher
    first = updates[0]
    assert first[0] is None and first[2].size == (256, 256) and "**latency**" in first[3]
    assert ["teacher step 1/3" in updates[1][1], "teacher step 2/3" in updates[2][1]] == [True, True]
    assert all(u[2] == gr.skip() for u in updates[1:])  # the student's image stays
    last = updates[-1]
    assert last[0].size == (256, 256) and "**latency**" in last[1] and "reads the prompt as" in last[4]


def test_pickers_follow_the_registry(two_roles, studio_registry):
    handlers = CompareHandlers(two_roles, StudioSettings())
    teachers, everyone = handlers.refresh_models(None, None)
    assert [model_id for _, model_id in teachers["choices"]] == [MODEL]
    assert [model_id for _, model_id in everyone["choices"]] == ["tiny-student", MODEL]  # students first
    assert (teachers["value"], everyone["value"]) == (MODEL, "tiny-student")
    assert "tiny-student · student · dmd2 · 1 step" in [label for label, _ in everyone["choices"]]
    assert handlers.refresh_models(MODEL, MODEL)[1]["value"] == MODEL  # a selection still there stays
    assert handlers.select_model("tiny-student")["value"] == 1
    assert CompareHandlers(studio_registry, StudioSettings()).refresh_models("gone", "gone")[1]["value"] == MODEL


def test_the_studio_has_a_compare_tab(studio_registry, tmp_path):
    from engines.registry import Registry

    demo = build_ui(studio_registry, StudioSettings())
    names = {getattr(fn, "api_name", None) for fn in demo.fns.values()}
    assert {"generate", "compare", "race"} <= names
    tabs = [c["props"]["label"] for c in demo.config["components"] if c["type"] == "tabitem"]
    assert tabs == ["Image", "Text", "Video", "Compare", "Models", "Train"]  # Train: on unless DISTILLERY_TRAIN_TAB=0
    # With no checkpoints the tab still builds; comparing then says what is missing.
    empty = Registry([tmp_path], device="cpu")
    assert isinstance(build_ui(empty, StudioSettings()), gr.Blocks)
    with pytest.raises(gr.Error, match="no teacher model is selected"):
        CompareHandlers(empty, StudioSettings()).compare(PROMPT, 1, None, None, None, None)
