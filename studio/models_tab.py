"""Models tab: every checkpoint the registry found, one card in detail, and the directories it could not read."""

from __future__ import annotations

from dataclasses import dataclass
from numbers import Number
from typing import TYPE_CHECKING, Any

import gradio as gr

from studio.errors import user_errors

if TYPE_CHECKING:
    from engines.registry import Registry

COLUMNS = ["id", "modality", "role", "method", "default steps", "guidance", "resolution", "train GPU s", "device", "overall"]


def overall_metric(metrics: dict[str, Any]) -> float | None:
    """`metrics["overall"]`, else the first `overall` one level down (e.g. metrics["training_eval"]["overall"])."""
    candidates = [metrics] + [value for value in metrics.values() if isinstance(value, dict)]
    for found in candidates:
        value = found.get("overall")
        if isinstance(value, Number) and not isinstance(value, bool):
            return float(value)
    return None


def card_rows(registry: Registry) -> list[list[Any]]:
    rows = []
    for c in sorted(registry.cards(), key=lambda c: (c.modality, c.role != "teacher", c.id)):
        overall = overall_metric(c.metrics)
        gpu_s = "" if c.train_gpu_seconds is None else round(float(c.train_gpu_seconds), 1)
        score = "" if overall is None else round(overall, 3)
        rows.append(
            [c.id, c.modality, c.role, c.method, c.default_steps, c.default_guidance, c.resolution, gpu_s, c.device or "", score]
        )
    return rows


def card_detail(registry: Registry, model_id: str | None) -> dict[str, Any]:
    if not model_id:
        return {}
    card = registry.card(model_id)
    return {**card.to_json(), "path": str(card.path) if card.path else None}


def problems_markdown(registry: Registry) -> str:
    if not registry.problems:
        return "No problems: every checkpoint directory found was readable."
    lines = [f"- `{path}`: {message}" for path, message in sorted(registry.problems.items())]
    return f"**{len(lines)} checkpoint director{'y' if len(lines) == 1 else 'ies'} could not be read:**\n\n" + "\n".join(lines)


def status_markdown(registry: Registry) -> str:
    loaded = ", ".join(f"`{model_id}` ({backend})" for model_id, backend in registry.loaded()) or "none yet"
    roots = ", ".join(f"`{root}`" for root in registry.roots)
    return f"**device** {registry.device} · **models** {len(registry.cards())} in {roots} · **loaded** {loaded}"


class ModelsHandlers:
    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.refresh = user_errors(self._refresh)
        self.show = user_errors(self._show)

    def _refresh(self, current: str | None = None):
        """Rescan the checkpoint directories: (table, picker, detail, problems, status)."""
        self.registry.refresh()
        ids = [row[0] for row in card_rows(self.registry)]
        if current not in ids:
            current = ids[0] if ids else None
        return (
            gr.update(value=card_rows(self.registry)),
            gr.update(choices=ids, value=current),
            card_detail(self.registry, current),
            problems_markdown(self.registry),
            status_markdown(self.registry),
        )

    def _show(self, model_id: str | None):
        return card_detail(self.registry, model_id)

    @staticmethod
    def pick_row(evt: gr.SelectData):
        """A click anywhere in a table row selects that row's model."""
        return evt.row_value[0] if evt.row_value else gr.skip()


@dataclass
class ModelsTab:
    handlers: ModelsHandlers
    refresh_event: Any  # the refresh button's event; other tabs chain `.then(...)` to it


def build(registry: Registry) -> ModelsTab:
    handlers = ModelsHandlers(registry)
    ids = [row[0] for row in card_rows(registry)]
    first = ids[0] if ids else None
    status = gr.Markdown(status_markdown(registry), elem_id="models-status")
    table = gr.Dataframe(
        card_rows(registry), headers=COLUMNS, interactive=False, label="Checkpoints", elem_id="models-table", wrap=True
    )
    with gr.Row():
        picker = gr.Dropdown(ids, value=first, label="Card", elem_id="models-picker", scale=3)
        refresh = gr.Button("↻ refresh", elem_id="models-refresh", scale=1, min_width=80)
    detail = gr.JSON(card_detail(registry, first), label="Card detail", elem_id="models-detail")
    gr.Markdown("### Problems")
    problems = gr.Markdown(problems_markdown(registry), elem_id="models-problems")

    picker.change(handlers.show, inputs=picker, outputs=detail, api_visibility="private", queue=False)
    table.select(ModelsHandlers.pick_row, outputs=picker, api_visibility="private", queue=False)
    event = refresh.click(
        handlers.refresh, inputs=picker, outputs=[table, picker, detail, problems, status], api_visibility="private"
    )
    return ModelsTab(handlers, event)
