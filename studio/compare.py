"""Teacher against student (or any model) on one prompt and seed: both images, what each cost, and the judge's verdict.

Plain Python over a `Registry`, so it is tested without a browser; the Compare tab only formats what these
functions return. Both sides get the same seed, so at equal resolutions they start from the same noise and
differ only in how they denoise it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from engines.base import collect
from engines.errors import CheckpointError, InvalidRequest
from engines.requests import MAX_STEPS, ImageRequest, as_int, resolve_seed
from trainer.worlds import shapes
from trainer.worlds.parse import parse

if TYPE_CHECKING:
    from engines.card import ModelCard
    from engines.registry import Registry
    from engines.results import Result

Stream = Callable[[str, ImageRequest], Iterator["Result"]]  # (model id, request) -> results, as ImageEngine.stream
RELATION_WORDS = {"left_of": "left of", "right_of": "right of", "above": "above", "below": "below"}


@dataclass(frozen=True)
class Verdict:
    """The world's judge on one image: does it show exactly what the prompt's condition asks for?"""

    condition: shapes.Condition
    passed: bool
    reason: str  # why it failed, in words; "" when it passed
    detections: tuple[shapes.Detection, ...]

    @property
    def category(self) -> str:
        return self.condition.category


@dataclass(frozen=True)
class Side:
    """One finished generation of a comparison."""

    model_id: str
    role: str
    method: str
    steps: int
    guidance: float
    image: Image.Image  # native resolution
    latency_ms: float  # text encoding + denoising + decoding; a first call's model loading is in load_ms instead
    load_ms: float
    nfe: int
    verdict: Verdict | None  # None when the prompt is outside the world's grammar


@dataclass(frozen=True)
class TeacherStep:
    """The teacher mid-race: its current estimate of the final image after `step` of `total_steps`."""

    step: int
    total_steps: int
    image: Image.Image
    elapsed_ms: float
    nfe: int


@dataclass(frozen=True)
class Comparison:
    prompt: str
    seed: int
    condition: shapes.Condition | None
    teacher: Side
    student: Side


@dataclass(frozen=True)
class Plan:
    """A validated comparison, before any model runs."""

    prompt: str
    seed: int
    condition: shapes.Condition | None
    teacher: ModelCard
    teacher_request: ImageRequest
    student: ModelCard
    student_request: ImageRequest


def _image_card(registry: Registry, model_id: str | None, side: str, role: str | None = None) -> ModelCard:
    if not model_id:
        raise CheckpointError(f"no {side} model is selected; pick one (or add checkpoints and press refresh on the Models tab)")
    card = registry.card(model_id)
    if card.modality != "image":
        raise InvalidRequest(f"{model_id!r} is a {card.modality} model; the Compare tab compares image models")
    if role and card.role != role:
        raise InvalidRequest(f"{model_id!r} is a {card.role}, but the {side} side needs a {role}; pick one of role {role}")
    return card


def _steps(name: str, value, card: ModelCard) -> int:
    """The asked-for steps, or the card's default when the box is empty."""
    return card.default_steps if value is None else as_int(name, value, 1, MAX_STEPS)


def plan(registry: Registry, prompt, seed, teacher_id, teacher_steps, student_id, student_steps) -> Plan:
    """Check every input (prompt, seed, both models and step counts) so a bad one fails before anything runs."""
    base = ImageRequest(prompt=prompt, seed=seed)  # the engine's own rules and messages for prompt and seed
    seed = resolve_seed(base.seed)  # drawn once, so both sides share it
    teacher = _image_card(registry, teacher_id, "teacher", role="teacher")
    student = _image_card(registry, student_id, "student")
    t_steps = _steps("teacher steps", teacher_steps, teacher)
    s_steps = _steps("student steps", student_steps, student)
    return Plan(
        base.prompt,
        seed,
        parse(base.prompt),
        teacher,
        ImageRequest(base.prompt, seed, t_steps),
        student,
        ImageRequest(base.prompt, seed, s_steps),
    )


def why_not(detections: list[shapes.Detection], condition: shapes.Condition) -> str:
    """A short reason `shapes.matches` said no, checked from the coarsest failure to the finest."""
    wanted = sum(spec.count for spec in condition.specs)
    if len(detections) != wanted:
        return f"expected {wanted} object{'s' * (wanted != 1)}, detected {len(detections)}"
    unclear = sum(d.shape is None for d in detections)
    if unclear:
        return f"{unclear} of the objects {'is not a clean shape' if unclear == 1 else 'are not clean shapes'} of the world"
    if condition.relation and shapes.matches(detections, replace(condition, relation=None)):
        return f"the right objects, but the first is not {RELATION_WORDS[condition.relation]} the second"
    return "the detected shapes, colours or sizes differ from the prompt"


def judge_image(image: Image.Image, condition: shapes.Condition) -> Verdict:
    """`shapes.matches(shapes.detect(image), condition)`, at the image's own resolution as the trainer and bench judge it."""
    found = shapes.detect(np.asarray(image.convert("RGB"), dtype=np.uint8))
    passed = shapes.matches(found, condition)
    return Verdict(condition, passed, "" if passed else why_not(found, condition), tuple(found))


def engine_stream(registry: Registry) -> Stream:
    return lambda model_id, request: registry.engine(model_id).stream(request)


def _side(card: ModelCard, request: ImageRequest, result: Result, condition: shapes.Condition | None) -> Side:
    image = result.images[0]
    t = result.timings
    guidance = card.default_guidance if request.guidance is None else request.guidance
    verdict = judge_image(image, condition) if condition else None
    return Side(
        card.id, card.role, card.method, result.total_steps, guidance, image, t.encode_ms + t.run_ms, t.load_ms, t.nfe, verdict
    )


def run_plan(p: Plan, stream: Stream) -> Iterator[Side | TeacherStep]:
    """The student's finished Side first (it is fast), then a TeacherStep per intermediate teacher estimate,
    then the teacher's finished Side."""
    yield _side(p.student, p.student_request, collect(stream(p.student.id, p.student_request)), p.condition)
    for result in stream(p.teacher.id, p.teacher_request):
        if result.final:
            yield _side(p.teacher, p.teacher_request, result, p.condition)
        else:
            t = result.timings
            yield TeacherStep(result.step, result.total_steps, result.images[0], t.encode_ms + t.run_ms, t.nfe)


def race(
    registry: Registry, prompt, seed, teacher_id, teacher_steps, student_id, student_steps, stream: Stream | None = None
) -> Iterator[Side | TeacherStep]:
    """Validate, then yield as `run_plan` does (student first, then the teacher step by step).

    `stream` defaults to the registry's engines; the studio passes its GPU-wrapped one."""
    p = plan(registry, prompt, seed, teacher_id, teacher_steps, student_id, student_steps)
    yield from run_plan(p, stream or engine_stream(registry))


def compare(
    registry: Registry, prompt, seed, teacher_id, teacher_steps, student_id, student_steps, stream: Stream | None = None
) -> Comparison:
    """Both finished images with their latency, NFE, steps and (when the prompt is in the world's grammar) verdicts."""
    p = plan(registry, prompt, seed, teacher_id, teacher_steps, student_id, student_steps)
    student, teacher = [item for item in run_plan(p, stream or engine_stream(registry)) if isinstance(item, Side)]
    return Comparison(p.prompt, p.seed, p.condition, teacher, student)
