"""Train tab: start background distillation jobs, watch them live, cancel / resume / delete, publish.

The tab is a view over `jobs`: every action goes through the same Runner the CLI twin uses,
and everything shown (table, loss curve, samples, judge score, ETA) is read from the job store and
the run directories on each timer tick, so a restarted studio shows exactly what is going on.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gradio as gr
import pandas as pd

from jobs.runner import REPO, Runner
from jobs.store import FINISHED, RUNNING, Job, JobError
from studio.errors import user_errors

if TYPE_CHECKING:
    from engines.registry import Registry

COLUMNS = ["id", "name", "method", "status", "step", "loss", "judge", "ETA", "error"]
NO_TEACHER = "(none: train a teacher from scratch)"
REFRESH_S = 2.0
EMPTY_PLOT = None  # not an empty DataFrame: Vega would fix its column types from one and never draw the line


def base_configs() -> list[str]:
    return sorted(p.name for p in (REPO / "configs").glob("*.yaml"))


def method_names() -> list[str]:
    from trainer.methods import METHODS  # a dict of import paths: nothing heavy is imported

    return list(METHODS)


def yaml_number(value: float | int) -> str:
    """A number as YAML reads it back with its type: YAML 1.1 takes `1e-05` for a string, `0.00001` for a float."""
    if isinstance(value, int):
        return str(value)
    text = repr(float(value))
    return text if "e" not in text else f"{float(value):.20f}".rstrip("0")


def whole(name: str, value: Any, low: int) -> int:
    if value is None or float(value) != int(float(value)) or int(value) < low:
        raise JobError(f"{name} must be a whole number >= {low}, got {value!r}")
    return int(value)


def _fmt_eta(seconds: float | None) -> str:
    if seconds is None:
        return ""
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def _loss(job: Job) -> str:
    value = next((v for k, v in job.last_metrics.items() if k.startswith("loss")), None)
    return "" if value is None else f"{value:.4f}"


class TrainHandlers:
    def __init__(self, registry: Registry, runner: Runner) -> None:
        self.registry, self.runner = registry, runner
        self.start = user_errors(self._start)
        self.tick = user_errors(self._tick)
        self.cancel = user_errors(self._action("cancel"))
        self.resume = user_errors(self._action("resume"))
        self.delete = user_errors(self._action("delete"))
        self.publish = user_errors(self._publish)

    def teachers(self) -> list[str]:
        return [NO_TEACHER] + sorted(c.id for c in self.registry.cards("image") if c.role == "teacher")

    # ------------------------------------------------------------------ start
    def overrides(self, method, teacher, name, max_steps, batch_size, lr, student_steps, seed, device, extra) -> list[str]:
        """The form as `--key=value` overrides; `extra` lines are parsed as YAML data too, never run."""
        if method not in method_names():
            raise JobError(f"unknown method {method!r}; known: {', '.join(method_names())}")
        if lr is None:
            raise JobError("learning rate is empty")
        out = [
            f"--method={method}",
            f"--max_steps={whole('steps', max_steps, 1)}",
            f"--batch_size={whole('batch size', batch_size, 1)}",
            f"--lr={yaml_number(float(lr))}",
            f"--seed={whole('seed', seed, 0)}",
            f"--device={device}",
            f"--export.default_steps={whole('student steps', student_steps, 1)}",
        ]
        if method == "dmd2":  # DMD2 trains the step counts it ships with by backward simulation
            out.append(f"--method_config.student_steps=[{int(student_steps)}]")
        if name and name.strip():
            out.append(f"--export.id={name.strip()}")
        if method != "flow_matching":
            if not teacher or teacher == NO_TEACHER:
                raise JobError(f"method {method!r} distils a teacher: pick one from the registry")
            card = self.registry.card(teacher)
            out.append(f"--teacher={card.path}")
        for line in (extra or "").splitlines():
            if line.strip() and not line.strip().startswith("#"):
                out.append(line.strip() if line.strip().startswith("--") else f"--{line.strip()}")
        return out

    def _start(
        self, base, method, teacher, name, max_steps, batch_size, lr, student_steps, seed, device, extra, selected, upload=None
    ):
        overrides = self.overrides(method, teacher, name, max_steps, batch_size, lr, student_steps, seed, device, extra)
        if upload:  # an uploaded YAML is data: load_config reads it with yaml.safe_load and checks it as a dataclass
            config_path = Path(upload)
        elif base in base_configs():
            config_path = REPO / "configs" / base
        else:
            raise JobError(f"unknown base config {base!r}; pick one of {', '.join(base_configs())}")
        if not (name and name.strip()):
            overrides.append(f"--export.id={method}-{time.strftime('%Y%m%d-%H%M%S')}")
        # The export goes to the job's own run directory: a base config naming checkpoints/<id> must not overwrite
        # a shipped model. Publish copies it into the registry afterwards.
        overrides.append("--export.output_dir=null")
        job = self.runner.submit(config_path, overrides, name=(name or "").strip() or None)
        message = f"Started job {job.id} ({job.status}) in `{job.run_dir}`"
        return (message, *self._tick(job.id))

    # ------------------------------------------------------------------ watching
    def rows(self, jobs: list[Job]) -> list[list[Any]]:
        rows = []
        for job in reversed(jobs):
            judge = job.last_metrics.get("eval/overall")
            eta = self.runner.progress(job).eta_s if job.status == RUNNING else None
            rows.append(
                [
                    job.id,
                    job.name,
                    job.config.get("method", ""),
                    job.status,
                    f"{job.last_step}/{job.max_steps}",
                    _loss(job),
                    "" if judge is None else f"{judge:.3f}",
                    _fmt_eta(eta),
                    job.error or "",
                ]
            )
        return rows

    def detail(self, job: Job | None):
        """(markdown, loss plot, judge plot, latest sample) for one job."""
        if job is None:
            return "No job selected.", EMPTY_PLOT, EMPTY_PLOT, None
        progress = self.runner.progress(job)
        losses = [
            {"step": r["step"], "value": float(v), "series": k}
            for r in progress.records
            for k, v in r.items()
            if k.startswith("loss") and isinstance(v, int | float)
        ]
        evals = [r for r in progress.records if "eval/overall" in r]
        judge = [{"step": r["step"], "value": float(r["eval/overall"]), "series": "overall"} for r in evals]
        lines = [
            f"**job {job.id} · {job.name}** — **{job.status}** · step **{progress.step} / {job.max_steps}**",
            f"ETA {_fmt_eta(progress.eta_s)}" if progress.eta_s is not None else "",
            f"error: {job.error}" if job.error else "",
            f"run directory `{job.run_dir}` (log: `train.log`)",
        ]
        text = "\n\n".join(line for line in lines if line)
        sample = str(progress.sample) if progress.sample else None
        return text, pd.DataFrame(losses) if losses else EMPTY_PLOT, pd.DataFrame(judge) if judge else EMPTY_PLOT, sample

    def _tick(self, selected):
        jobs = self.runner.poll()
        ids = [job.id for job in jobs]
        choices = [(f"#{job.id} {job.name} ({job.status})", job.id) for job in reversed(jobs)]
        try:
            selected = int(selected) if selected is not None else None
        except (TypeError, ValueError):
            selected = None
        if selected not in ids:
            selected = ids[-1] if ids else None
        job = next((j for j in jobs if j.id == selected), None)
        return (gr.update(value=self.rows(jobs)), gr.update(choices=choices, value=selected), *self.detail(job))

    # ------------------------------------------------------------------ actions
    def _action(self, name: str):
        def act(selected):
            if selected is None:
                raise JobError("select a job first")
            job_id = int(selected)
            if name == "delete":
                self.runner.delete(job_id, remove_files=True)
                message = f"Deleted job {job_id}."
            else:
                job = getattr(self.runner, name)(job_id)
                message = f"Job {job_id}: {job.status}" + (" (stopping: saving a checkpoint)" if name == "cancel" else "")
            return (message, *self._tick(None if name == "delete" else job_id))

        return act

    def _publish(self, selected):
        if selected is None:
            raise JobError("select a finished job first")
        job = self.runner.store.get(int(selected))
        if job.status != FINISHED:
            raise JobError(f"job {job.id} is {job.status}; only a finished job can be published")
        dest = self.runner.publish(job.id, published_root(self.runner))
        self.registry.refresh()
        return (f"Published `{dest.name}` to `{dest}`: it is now in the Image tab's model picker.", *self._tick(job.id))


def published_root(runner: Runner) -> Path:
    return runner.data_dir / "published"


@dataclass
class TrainTab:
    handlers: TrainHandlers
    published_event: Any  # the Image and Compare pickers refresh after it


def build(registry: Registry, settings) -> TrainTab:
    runner = Runner.open(settings.data_dir)
    root = published_root(runner)
    if root not in registry.roots:  # published students survive a restart: the registry scans this root
        registry.roots.append(root)
        registry.refresh()
    handlers = TrainHandlers(registry, runner)
    gr.Markdown(
        "Distill a teacher into a few-step student (or train a teacher from scratch) in the background. "
        "Jobs keep running if you close the page or restart the studio; each one writes `train.log`, "
        "`metrics.jsonl` and sample grids to its run directory."
    )
    with gr.Row():
        with gr.Column(scale=2):
            with gr.Row():
                base = gr.Dropdown(base_configs(), value="tiny-cpu.yaml", label="Base config", elem_id="train-base")
                method = gr.Dropdown(method_names(), value="dmd2", label="Method", elem_id="train-method")
                teachers = handlers.teachers()
                teacher = gr.Dropdown(
                    teachers, value=teachers[1] if len(teachers) > 1 else NO_TEACHER, label="Teacher", elem_id="train-teacher"
                )
                name = gr.Textbox(label="Model id (name of the student)", placeholder="my-student", elem_id="train-name")
            with gr.Row():
                max_steps = gr.Number(200, label="Steps", precision=0, minimum=1, elem_id="train-steps")
                batch = gr.Number(8, label="Batch size", precision=0, minimum=1, elem_id="train-batch")
                lr = gr.Number(0.0001, label="Learning rate", elem_id="train-lr")
                student_steps = gr.Number(4, label="Student steps", precision=0, minimum=1, elem_id="train-student-steps")
                seed = gr.Number(0, label="Seed", precision=0, minimum=0, elem_id="train-seed")
                device = gr.Dropdown(["auto", "cpu", "cuda"], value="auto", label="Device", elem_id="train-device")
            upload = gr.File(
                label="…or upload a YAML config (read as data, never run)",
                file_types=[".yaml", ".yml"],
                type="filepath",
                height=90,
                elem_id="train-upload",
            )
            extra = gr.Textbox(
                label="More settings (one --key=value per line, any TrainConfig field)",
                lines=2,
                placeholder="--model_preset=dit-tiny\n--sample_every=50",
                elem_id="train-extra",
            )
            start = gr.Button("Start training", variant="primary", elem_id="train-start")
            status = gr.Markdown("", elem_id="train-status")
        with gr.Column(scale=3):
            table = gr.Dataframe(
                handlers.rows(runner.store.list()),
                headers=COLUMNS,
                interactive=False,
                label="Jobs",
                elem_id="train-jobs",
                wrap=True,
            )
            with gr.Row():
                job = gr.Dropdown([], value=None, label="Job", elem_id="train-job", scale=3)
                cancel = gr.Button("Cancel", elem_id="train-cancel", min_width=80)
                resume = gr.Button("Resume", elem_id="train-resume", min_width=80)
                delete = gr.Button("Delete", variant="stop", elem_id="train-delete", min_width=80)
                publish = gr.Button("Publish", variant="primary", elem_id="train-publish", min_width=80)
            detail = gr.Markdown("No job selected.", elem_id="train-detail")
            with gr.Row():
                loss_plot = gr.LinePlot(EMPTY_PLOT, x="step", y="value", color="series", title="Loss", elem_id="train-loss")
                # Points, not a line: short runs evaluate once or twice, and one point draws no line.
                judge_plot = gr.ScatterPlot(EMPTY_PLOT, x="step", y="value", title="Judge score (overall)", elem_id="train-judge")
            sample = gr.Image(
                label="Latest samples",
                type="filepath",
                interactive=False,
                height=288,
                elem_id="train-sample",
                elem_classes="pixelated",
            )

    views = [table, job, detail, loss_plot, judge_plot, sample]
    form = [base, method, teacher, name, max_steps, batch, lr, student_steps, seed, device, extra, job, upload]
    start.click(handlers.start, inputs=form, outputs=[status, *views], api_visibility="private")
    gr.Timer(REFRESH_S).tick(handlers.tick, inputs=job, outputs=views, api_visibility="private", show_progress="hidden")
    job.input(handlers.tick, inputs=job, outputs=views, api_visibility="private", show_progress="hidden")
    for button, handler in ((cancel, handlers.cancel), (resume, handlers.resume), (delete, handlers.delete)):
        button.click(handler, inputs=job, outputs=[status, *views], api_visibility="private")
    published = publish.click(handlers.publish, inputs=job, outputs=[status, *views], api_visibility="private")
    return TrainTab(handlers, published)
