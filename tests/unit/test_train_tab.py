"""The Train tab's settings and handlers, without a browser: on/off switch, auth, form validation."""

import gradio as gr
import pytest

from jobs.runner import Runner
from studio.app import StudioSettings, build_ui
from studio.train_tab import NO_TEACHER, TrainHandlers, yaml_number


def tab_labels(demo: gr.Blocks) -> list[str]:
    return [block.label for block in demo.blocks.values() if isinstance(block, gr.Tab)]


def test_the_train_tab_can_be_switched_off(monkeypatch, studio_registry, tmp_path):
    monkeypatch.setenv("DISTILLERY_TRAIN_TAB", "0")
    monkeypatch.setenv("DISTILLERY_TRAIN_SECRET", "s3cret")
    settings = StudioSettings(device="cpu", data_dir=str(tmp_path))
    assert settings.train_tab is False and settings.train_secret == "s3cret"
    assert "Train" not in tab_labels(build_ui(studio_registry, settings))
    monkeypatch.delenv("DISTILLERY_TRAIN_TAB")
    assert StudioSettings().train_tab is True
    assert "Train" in tab_labels(build_ui(studio_registry, StudioSettings(device="cpu", data_dir=str(tmp_path))))

    from app import parse_args

    assert parse_args(["--no-train-tab", "--data-dir", str(tmp_path)]).no_train_tab is True


def test_the_secret_turns_on_gradio_auth(monkeypatch):
    from studio import app

    seen = {}
    monkeypatch.setattr(gr.Blocks, "launch", lambda self, **options: seen.update(options))
    app.launch(gr.Blocks(), StudioSettings(train_tab=True, train_secret="s3cret"))
    assert seen["auth"]("anyone", "s3cret") and not seen["auth"]("anyone", "guess")
    seen.clear()
    app.launch(gr.Blocks(), StudioSettings(train_tab=False, train_secret="s3cret"))  # no training, nothing to guard
    assert "auth" not in seen


def test_the_form_is_validated_before_anything_starts(studio_registry, tmp_path):
    handlers = TrainHandlers(studio_registry, Runner.open(tmp_path, gpus=0))
    form = dict(
        base="tiny-cpu.yaml", method="flow_matching", teacher=NO_TEACHER, name="x", max_steps=4, batch_size=2, lr=-0.01,
        student_steps=2, seed=0, device="cpu", extra="", selected=None,
    )  # fmt: skip
    cases = [
        ({}, "lr must be > 0"),
        ({"lr": 1e-4, "method": "dmd2"}, "distils a teacher: pick one"),
        ({"lr": 1e-4, "method": "dmd2", "teacher": "nope"}, "unknown model id 'nope'"),
        ({"lr": 1e-4, "max_steps": 0}, "steps must be a whole number >= 1"),
        ({"lr": 1e-4, "extra": "--batch_size=oops"}, "batch_size must be int"),
        ({"lr": 1e-4, "base": "../secrets.yaml"}, "unknown base config"),
    ]
    for change, message in cases:
        with pytest.raises(gr.Error, match=message):
            handlers.start(**{**form, **change})
    code = tmp_path / "evil.yaml"
    code.write_text(f"max_steps: !!python/object/apply:os.system ['touch {tmp_path}/pwned']\n")
    with pytest.raises(gr.Error, match="cannot read config"):  # parsed as data: a Python tag is an error, never run
        handlers.start(**{**form, "lr": 1e-4, "upload": str(code)})
    assert handlers.runner.store.list() == [] and not (tmp_path / "pwned").exists()
    assert yaml_number(1e-5) == "0.00001" and yaml_number(3e-4) == "0.0003" and yaml_number(7) == "7"
