"""bench/image_plots.py: the two plots of an image result file, drawn from its rows alone."""

from pathlib import Path

import numpy as np
from PIL import Image

from bench.image import summarise
from bench.image_plots import plot, plot_judge_vs_fd


def _row(model: str, role: str, steps: int, overall: float, fd: float) -> dict:
    return {
        "model": model,
        "role": role,
        "steps": steps,
        "nfe": steps * (2 if role == "teacher" else 1),
        "quality": {"overall": overall},
        "fd": fd,
        "latency_ms_p50": 1.0,
    }


def _result(rows: list[dict]) -> dict:
    return {"suite": "image", "device": "NVIDIA H100 80GB HBM3", "prompts": 560, "rows": rows, "summary": summarise(rows)}


ROWS = [
    *(_row("teacher", "teacher", s, o, f) for s, o, f in ((4, 0.65, 105.0), (25, 0.904, 21.4), (50, 0.902, 23.8))),
    *(_row("dmd2", "student", s, o, f) for s, o, f in ((1, 0.73, 35.7), (2, 0.85, 31.0), (4, 0.83, 36.7))),
    _row("lcm", "student", 1, 0.26, 3626.7),  # far off: named in the legend, not drawn
]


def _pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB")).astype(int)


def test_both_plots_are_written_as_real_images(tmp_path) -> None:
    paths = plot(_result(ROWS), tmp_path / "out", "h100")
    assert [p.name for p in paths] == ["image-h100-judge-vs-fd.png", "image-h100-judge-vs-nfe.png"]
    for path in paths:
        pixels = _pixels(path)
        assert pixels.shape[0] > 400 and pixels.shape[1] > 700
        assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 20  # drawn, not blank


def test_the_target_region_is_shaded_only_when_the_file_can_place_it(tmp_path) -> None:
    """The green target box needs the teacher's 50-step FD (its limit) and best judge; without a 50-step row it is
    not drawn, so the two images differ."""
    with_target = plot_judge_vs_fd(_result(ROWS), tmp_path / "a.png")
    no_fifty = [r for r in ROWS if r["steps"] != 50]
    assert "one_step_fd_limit" not in _result(no_fifty)["summary"]
    without = plot_judge_vs_fd(_result(no_fifty), tmp_path / "b.png")
    green = [np.sum((p[..., 1] > p[..., 0] + 20) & (p[..., 1] > p[..., 2] + 20)) for p in map(_pixels, (with_target, without))]
    assert green[0] > 5 * max(green[1], 1)


def test_nothing_to_plot_writes_nothing(tmp_path) -> None:
    assert plot(_result([]), tmp_path, "cpu") == []
    assert list(tmp_path.iterdir()) == []


def test_rows_that_keep_their_errors_get_error_bars(tmp_path) -> None:
    from bench.image_plots import error_bars
    from bench.paired import overall_standard_error, pack_verdicts
    from trainer.worlds import shapes

    accepted = np.arange(560) % 3 != 0  # two thirds pass, in every category
    categories = [scene.condition.category for scene in shapes.eval_scenes(560)]
    row = _row("dmd2", "student", 1, 0.667, 35.7) | {"fd_se": 3.2, "verdicts": pack_verdicts(accepted)}
    fd_se, judge_se = error_bars(row, categories)
    assert fd_se == 3.2 and judge_se == overall_standard_error(accepted, categories)
    assert 0.015 < judge_se < 0.025  # about sqrt(p (1 - p) / 560)
    assert error_bars(_row("old", "student", 1, 0.7, 30.0), categories) == (None, None)  # rows before session 25
    # a plot with such a row is drawn, and differs from the same plot without its bars
    plain = plot_judge_vs_fd(_result([*ROWS[:3], _row("dmd2", "student", 1, 0.667, 35.7)]), tmp_path / "plain.png")
    barred = plot_judge_vs_fd(_result([*ROWS[:3], row]), tmp_path / "barred.png")
    assert (_pixels(plain) != _pixels(barred)).any()
