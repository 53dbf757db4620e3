"""What every generation tab's model picker and seed box share."""

from __future__ import annotations

import gradio as gr

from engines.requests import resolve_seed


def refreshed_picker(choices: list[tuple[str, str]], current: str | None, default_id: str | None):
    """Dropdown update after a registry refresh: keeps the selection while that model is still there."""
    if current not in {model_id for _, model_id in choices}:
        current = default_id
    return gr.update(choices=choices, value=current)


def random_seed() -> int:
    return resolve_seed(None)
