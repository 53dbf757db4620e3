"""Compare tab: a teacher and a student (or any model) on one prompt and seed, side by side, judged by the world.

`CompareHandlers` turns what `studio.compare` returns into widget values (plain Python, tested directly);
`build` lays out the widgets and wires them. **Compare** shows both finished images; **Race** shows the
student's result as soon as it is ready, then the teacher's estimate at every step of its longer run.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import gradio as gr

from engines.requests import ImageRequest, resolve_seed
from studio.compare import Comparison, Side, TeacherStep, compare, race
from studio.errors import user_errors
from studio.gpu import gpu
from studio.image_tab import EXAMPLES, default_model, model_choices, steps_info
from studio.imaging import upscale
from trainer.worlds.parse import describe

if TYPE_CHECKING:
    from engines.card import ModelCard
    from engines.registry import Registry
    from engines.results import Result
    from studio.app import StudioSettings
    from trainer.worlds.shapes import Detection

OUTSIDE_GRAMMAR = "no verdict: the prompt is outside the world's grammar"
GRAMMAR_HINT = (
    "The judge understands the world's own captions: colours, shapes, sizes, counts (two/three/four) and relations "
    "(left of, right of, above, below), e.g. *a red circle to the left of a blue square*."
)


def default_teacher(registry: Registry) -> ModelCard | None:
    teachers = model_choices(registry, role="teacher")
    return registry.card(teachers[0][1]) if teachers else None


def detection_text(d: Detection) -> str:
    shape = d.shape or "unclear blob"
    return f"{d.color} {d.size} {shape} at {d.x:.0f},{d.y:.0f}"


def side_markdown(side: Side) -> str:
    """Cost, model and verdict of one finished side, with the detected objects, so a fail can be understood."""
    load = f" · first call: model loaded in {side.load_ms:.0f} ms" if side.load_ms else ""
    lines = [
        f"**latency** {side.latency_ms:.1f} ms · **NFE** {side.nfe} · **steps** {side.steps} · **guidance** {side.guidance:g}",
        f"`{side.model_id}` ({side.role}, {side.method}){load}",
    ]
    verdict = side.verdict
    if verdict is None:
        lines.append(f"*{OUTSIDE_GRAMMAR}*")
    else:
        outcome = "✅ pass" if verdict.passed else f"❌ fail: {verdict.reason}"
        lines.append(f"**judge ({verdict.category})** {outcome}")
        found = "; ".join(detection_text(d) for d in verdict.detections) or "nothing"
        lines.append(f"detected: {found}")
    return "  \n".join(lines)  # Markdown line breaks


def summary_markdown(teacher: Side, student: Side) -> str:
    """One line over both sides: what the judge reads the prompt as, who passed, how much faster the student was."""
    speed = f"the student took {student.latency_ms:.1f} ms against the teacher's {teacher.latency_ms:.1f} ms"
    if student.latency_ms > 0 and teacher.latency_ms > 0:
        ratio = teacher.latency_ms / student.latency_ms
        speed += f" ({ratio:.1f}× faster)" if ratio >= 1 else f" ({1 / ratio:.1f}× slower)"
    speed += f", {student.nfe} NFE against {teacher.nfe}."
    if teacher.verdict is None:
        return f"**{OUTSIDE_GRAMMAR}.** {GRAMMAR_HINT}  \nSpeed: {speed}"
    condition = teacher.verdict.condition
    marks = {True: "✅", False: "❌"}
    return (
        f"**Judge** reads the prompt as *{condition.category}*: “{describe(condition)}”. "
        f"Teacher {marks[teacher.verdict.passed]} · student {marks[student.verdict.passed]}.  \nSpeed: {speed}"
    )


def step_label(step: TeacherStep) -> str:
    return f"**teacher step {step.step}/{step.total_steps}, {step.elapsed_ms:.0f} ms** · NFE {step.nfe}"


class CompareHandlers:
    """The Compare tab's event functions, bound to one registry and the studio settings."""

    def __init__(self, registry: Registry, settings: StudioSettings) -> None:
        self.registry = registry
        self.settings = settings
        self.compare = user_errors(self._compare)
        self.race = user_errors(self._race)
        self.select_model = user_errors(self._select_model)

        def stream(model_id: str, request: ImageRequest) -> Iterator[Result]:
            # Only the model id and request cross into the GPU worker; the registry comes from the closure.
            yield from registry.engine(model_id).stream(request)

        self._stream = gpu(stream)

    def show(self, image):
        return upscale(image, self.settings.display_px)

    def outputs(self, result: Comparison) -> tuple:
        """(teacher image, teacher info, student image, student info, summary)."""
        t, s = result.teacher, result.student
        return self.show(t.image), side_markdown(t), self.show(s.image), side_markdown(s), summary_markdown(t, s)

    def _compare(self, prompt, seed, teacher_id, teacher_steps, student_id, student_steps):
        args = (prompt, seed, teacher_id, teacher_steps, student_id, student_steps)
        return self.outputs(compare(self.registry, *args, stream=self._stream))

    def _race(self, prompt, seed, teacher_id, teacher_steps, student_id, student_steps):
        """Yield the same five outputs: the student's result first, then the teacher's estimate at every step."""
        student: Side | None = None
        for item in race(self.registry, prompt, seed, teacher_id, teacher_steps, student_id, student_steps, stream=self._stream):
            if isinstance(item, TeacherStep):
                yield self.show(item.image), step_label(item), gr.skip(), gr.skip(), gr.skip()
            elif student is None:
                student = item
                waiting = f"Student done in {item.latency_ms:.1f} ms; the teacher starts…"
                yield None, waiting, self.show(item.image), side_markdown(item), "Racing…"
            else:
                yield self.show(item.image), side_markdown(item), gr.skip(), gr.skip(), summary_markdown(item, student)

    def _select_model(self, model_id):
        """The steps box follows the picked model's default."""
        card = self.registry.card(model_id) if model_id else None
        return gr.update(value=card.default_steps if card else None, info=steps_info(card))

    def refresh_models(self, teacher: str | None = None, student: str | None = None):
        """Both pickers' choices after a registry refresh; a selection stays while its model is still there."""
        teachers, everyone = model_choices(self.registry, role="teacher"), model_choices(self.registry)
        if teacher not in {model_id for _, model_id in teachers}:
            teacher = teachers[0][1] if teachers else None
        if student not in {model_id for _, model_id in everyone}:
            card = default_model(self.registry)
            student = card.id if card else None
        return gr.update(choices=teachers, value=teacher), gr.update(choices=everyone, value=student)

    @staticmethod
    def random_seed() -> int:
        return resolve_seed(None)


@dataclass
class CompareTab:
    handlers: CompareHandlers
    teacher: gr.Dropdown
    student: gr.Dropdown


def build(registry: Registry, settings: StudioSettings) -> CompareTab:
    """Lay out the Compare tab inside the current Blocks context and wire its events."""
    handlers = CompareHandlers(registry, settings)
    teacher_card, student_card = default_teacher(registry), default_model(registry)
    if teacher_card is None:
        gr.Markdown("**No teacher checkpoint found.** The left side needs a model of role teacher; add one on the Models tab.")
    with gr.Row():
        prompt = gr.Textbox(label="Prompt", placeholder=EXAMPLES[0], lines=1, elem_id="compare-prompt", scale=4)
        seed = gr.Number(value=0, label="Seed (shared)", precision=0, elem_id="compare-seed", scale=1, min_width=100)
        dice = gr.Button("🎲", elem_id="compare-randomise", scale=0, min_width=50)
    with gr.Row():
        button = gr.Button("Compare", variant="primary", elem_id="compare")
        race_button = gr.Button("🏁 Race (stream the teacher)", elem_id="race")
    summary = gr.Markdown(
        "Press **Compare** for both finished images, or **Race** to watch them side by side.", elem_id="compare-summary"
    )
    columns = {}
    with gr.Row(equal_height=False):  # teacher left, student right
        for side, card, choices, heading in (
            ("teacher", teacher_card, model_choices(registry, role="teacher"), "### Teacher (N steps)"),
            ("student", student_card, model_choices(registry), "### Student, or any model (k steps)"),
        ):
            with gr.Column():
                gr.Markdown(heading)
                picker = gr.Dropdown(choices, value=card.id if card else None, label="Model", elem_id=f"compare-{side}-model")
                steps = gr.Number(
                    value=card.default_steps if card else None,
                    label="Steps",
                    precision=0,
                    info=steps_info(card),
                    elem_id=f"compare-{side}-steps",
                )
                image = gr.Image(
                    label=side.capitalize(),
                    type="pil",
                    format="png",
                    interactive=False,
                    height=288,
                    elem_id=f"compare-{side}-image",
                    elem_classes=["pixelated"],
                )
                info = gr.Markdown("", elem_id=f"compare-{side}-info")
            columns[side] = (picker, steps, image, info)
            picker.change(handlers.select_model, inputs=picker, outputs=steps, api_visibility="private", queue=False)
    gr.Examples([[p] for p in EXAMPLES], inputs=[prompt], label="Example prompts")

    teacher, teacher_steps, teacher_image, teacher_info = columns["teacher"]
    student, student_steps, student_image, student_info = columns["student"]
    inputs = [prompt, seed, teacher, teacher_steps, student, student_steps]
    outputs = [teacher_image, teacher_info, student_image, student_info, summary]
    gpu_queue = dict(inputs=inputs, outputs=outputs, concurrency_limit=settings.gpu_concurrency, concurrency_id="gpu")
    button.click(handlers.compare, api_name="compare", **gpu_queue)
    prompt.submit(handlers.compare, api_visibility="private", **gpu_queue)
    race_button.click(handlers.race, api_name="race", **gpu_queue)
    dice.click(CompareHandlers.random_seed, outputs=seed, api_visibility="private", queue=False)
    return CompareTab(handlers, teacher, student)
