"""The studio's handlers, called directly on a tiny checkpoint: streaming, bad input, the Models tab, the CLI."""

import json
import shutil
import subprocess
import sys
import types
from pathlib import Path

import gradio as gr
import pytest
from PIL import Image

from studio.app import StudioSettings, build_ui
from studio.image_tab import EXAMPLES, ImageHandlers
from studio.models_tab import ModelsHandlers, card_rows, overall_metric, problems_markdown

REPO = Path(__file__).resolve().parents[2]
MODEL = "tiny-cpu"


@pytest.fixture(scope="module")
def handlers(studio_registry):
    return ImageHandlers(studio_registry, StudioSettings(device="cpu"))


def run(handlers, prompt="a red circle to the left of a blue square", model=MODEL, seed=7, steps=None, guidance=None, batch=1):
    return list(handlers.generate(prompt, model, seed, steps, guidance, batch))


def test_generation_streams_previews_then_a_gallery(handlers, studio_registry):
    outputs = run(handlers, seed=5, steps=3, batch=2)
    assert len(outputs) == 3  # one update per denoising step
    for preview, gallery, originals, info in outputs[:-1]:
        assert isinstance(preview, Image.Image) and preview.height == 256
        assert gallery == originals == gr.skip()  # the galleries change only when the result is final
        assert "Denoising" in info
    preview, gallery, originals, info = outputs[-1]
    resolution = studio_registry.card(MODEL).resolution
    assert [image.size for image, _ in gallery] == [(256, 256)] * 2  # upscaled, nearest neighbour
    assert [image.size for image, _ in originals] == [(resolution, resolution)] * 2
    assert [caption for _, caption in gallery] == ["seed 5", "seed 6"]
    # The upscaled image is the original, pixel for pixel.
    assert gallery[0][0].resize(originals[0][0].size, Image.Resampling.NEAREST).tobytes() == originals[0][0].tobytes()
    facts = ["**seed** 5", "**steps** 3", "**NFE** 6", "**per image**", "**encode**", "**load**", f"`{MODEL}`", "**device** cpu"]
    assert [fact for fact in facts if fact not in info] == []


def test_defaults_come_from_the_card_and_same_seed_repeats(handlers, studio_registry):
    card = studio_registry.card(MODEL)
    first, second = run(handlers, seed=11)[-1], run(handlers, seed=11)[-1]
    assert f"**steps** {card.default_steps}" in first[3]
    assert first[2][0][0].tobytes() == second[2][0][0].tobytes()
    steps, guidance = handlers.select_model(MODEL)
    assert steps["value"] == card.default_steps and str(card.default_steps) in steps["info"]
    assert guidance["value"] == card.default_guidance


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"prompt": ""}, "prompt is empty"),
        ({"prompt": "   "}, "prompt is empty"),
        ({"prompt": "x" * 10_000}, "prompt is 10000 characters long; the limit is 1000"),
        ({"steps": 0}, "steps must be from 1 to 1000, got 0"),
        ({"steps": 10_000}, "steps must be from 1 to 1000, got 10000"),
        ({"seed": -1}, "seed must be from 0 to"),
        ({"seed": 10**30}, "seed must be from 0 to"),
        ({"batch": 0}, "batch must be from 1 to 64, got 0"),
        ({"batch": 1000}, "batch must be from 1 to 64, got 1000"),
        ({"batch": 9}, "batch must be from 1 to 8 in this studio, got 9"),
        ({"guidance": -1.0}, "guidance must be from 0.0 to 30.0"),
        ({"model": "no-such-model"}, "unknown model id 'no-such-model'"),
        ({"model": None}, "no image model is selected"),
    ],
)
def test_bad_input_is_a_clear_gradio_error(handlers, changes, message):
    with pytest.raises(gr.Error) as caught:
        run(handlers, **changes)
    assert message in caught.value.message
    assert "Traceback" not in caught.value.message
    assert run(handlers, batch=1)[-1][3].startswith("**seed** 7")  # still serving


def test_unexpected_failure_is_a_short_generic_error(studio_registry, monkeypatch, caplog):
    handlers = ImageHandlers(studio_registry, StudioSettings())

    def broken(model_id, backend="torch"):
        raise RuntimeError("CUDA out of memory (pretend)")

    monkeypatch.setattr(studio_registry, "engine", broken)
    with pytest.raises(gr.Error) as caught:
        run(handlers)
    assert "RuntimeError" in caught.value.message and "still running" in caught.value.message
    assert "out of memory" not in caught.value.message
    assert "unexpected error" in caplog.text


def test_random_seed_is_a_valid_seed():
    seeds = {ImageHandlers.random_seed() for _ in range(20)}
    assert len(seeds) > 1 and all(0 <= s < 2**31 for s in seeds)


def test_models_tab_lists_cards_and_problems(tmp_path, tiny_image_root):
    from engines.registry import Registry

    shutil.copytree(tiny_image_root / MODEL, tmp_path / MODEL)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "card.json").write_text("{not json")
    registry = Registry([tmp_path], device="cpu")
    rows = card_rows(registry)
    assert [row[:4] for row in rows] == [[MODEL, "image", "teacher", "flow_matching"]]
    assert "broken" in problems_markdown(registry) and "not valid JSON" in problems_markdown(registry)

    # A checkpoint added on disk appears after refresh; the picker keeps its selection.
    shutil.copytree(tiny_image_root / MODEL, tmp_path / "tiny-two")
    card = json.loads((tmp_path / "tiny-two" / "card.json").read_text())
    (tmp_path / "tiny-two" / "card.json").write_text(json.dumps({**card, "id": "tiny-two", "metrics": {"overall": 0.5}}))
    table, picker, detail, problems, status = ModelsHandlers(registry).refresh(MODEL)
    assert sorted(row[0] for row in table["value"]) == [MODEL, "tiny-two"]
    assert picker["value"] == MODEL and detail["id"] == MODEL and detail["path"].endswith(MODEL)
    assert "**models** 2" in status
    assert ModelsHandlers(registry).show("tiny-two")["metrics"] == {"overall": 0.5}
    assert ImageHandlers(registry, StudioSettings()).refresh_models(MODEL)["value"] == MODEL


def test_overall_metric_is_found_at_top_level_or_one_level_down():
    assert overall_metric({"overall": 0.9}) == 0.9
    assert overall_metric({"training_eval": {"overall": 0.25, "colors": 1.0}, "source": "x"}) == 0.25
    assert overall_metric({"latency_ms": 3.0}) is None


def test_build_ui_returns_blocks(studio_registry, tmp_path):
    from engines.registry import Registry

    demo = build_ui(studio_registry, StudioSettings())
    assert isinstance(demo, gr.Blocks)
    names = {getattr(fn, "api_name", None) for fn in demo.fns.values()}
    assert "generate" in names
    # An empty registry still builds; generating then says what is missing.
    empty = Registry([tmp_path], device="cpu")
    assert isinstance(build_ui(empty, StudioSettings()), gr.Blocks)
    with pytest.raises(gr.Error, match="no image model is selected"):
        run(ImageHandlers(empty, StudioSettings()), model=None)


def test_examples_are_valid_prompts():
    from engines.requests import ImageRequest

    assert len(EXAMPLES) >= 4
    for prompt in EXAMPLES:
        ImageRequest(prompt)


def test_gpu_wrapper_is_identity_without_spaces_and_wraps_with_it(monkeypatch):
    from studio.gpu import gpu

    fn = lambda: 1
    monkeypatch.setitem(sys.modules, "spaces", None)  # import spaces -> ImportError
    assert gpu(fn) is fn
    fake = types.SimpleNamespace(GPU=lambda duration: lambda f: ("wrapped", f, duration))
    monkeypatch.setitem(sys.modules, "spaces", fake)
    assert gpu(fn, duration=30) == ("wrapped", fn, 30)


def test_app_help_lists_the_options():
    done = subprocess.run([sys.executable, "app.py", "--help"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    for option in ("--host", "--port", "--share", "--device", "--checkpoints"):
        assert option in done.stdout


def test_app_defaults_follow_the_environment(monkeypatch):
    sys.path.insert(0, str(REPO))
    try:
        import app
    finally:
        sys.path.remove(str(REPO))
    monkeypatch.delenv("SPACE_ID", raising=False)
    monkeypatch.delenv("GRADIO_SERVER_PORT", raising=False)
    args = app.parse_args([])
    assert (args.host, args.port, args.share, args.device, args.checkpoints) == ("127.0.0.1", 7860, False, "auto", [])
    monkeypatch.setenv("SPACE_ID", "someone/distillery")
    monkeypatch.setenv("GRADIO_SERVER_PORT", "8080")
    args = app.parse_args(["--checkpoints", "a", "--checkpoints", "b", "--device", "cpu"])
    assert (args.host, args.port, args.checkpoints, args.device) == ("0.0.0.0", 8080, ["a", "b"], "cpu")


def test_app_refuses_a_model_path_it_cannot_load_before_serving(tmp_path):
    import app

    args = app.parse_args(["--model", str(tmp_path / "missing"), "--trust-remote-code"])
    assert args.model == [str(tmp_path / "missing")] and args.trust_remote_code
    with pytest.raises(SystemExit, match="--model .*missing: no checkpoint directory"):
        app.main(["--model", str(tmp_path / "missing"), "--device", "cpu", "--no-train-tab"])
    with pytest.raises(SystemExit, match="not available offline"):
        app.main(["--model", "some-org/some-masked-lm", "--device", "cpu", "--no-train-tab"])
