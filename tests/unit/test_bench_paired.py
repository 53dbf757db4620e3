"""`bench paired`: rows of one image result file compared image by image, with the standard error of the difference."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest

from bench import paired
from bench.paired import (
    PairedDifference,
    fd_jackknife,
    jackknife_se,
    pack_verdicts,
    paired_difference,
    unpack_verdicts,
)
from engines.features import frechet_distance
from trainer.worlds import shapes


def overall(accepted: np.ndarray, categories: list[str]) -> float:
    return shapes.category_scores(accepted, categories)["overall"]


@pytest.mark.parametrize("count", [1, 7, 8, 9, 560])
def test_verdicts_pack_to_hex_and_back(count: int) -> None:
    accepted = np.random.default_rng(count).random(count) < 0.6
    packed = pack_verdicts(accepted)
    assert isinstance(packed, str) and len(packed) == 2 * math.ceil(count / 8)
    np.testing.assert_array_equal(unpack_verdicts(packed, count), accepted)


def test_verdicts_of_another_prompt_count_or_not_hex_are_refused() -> None:
    packed = pack_verdicts(np.ones(16, bool))
    with pytest.raises(ValueError, match="hold 16 bits, not the 24 images"):
        unpack_verdicts(packed, 24)
    with pytest.raises(ValueError, match="must be a hex string"):
        unpack_verdicts("zz", 8)


def test_category_scores_from_verdicts_are_the_judges_scores() -> None:
    rng = random.Random(3)
    scenes = [shapes.sample_scene(rng, category) for category in shapes.CATEGORIES for _ in range(3)]
    images = shapes.to_uint8(shapes.render(scenes))
    conditions = [s.condition for s in scenes]
    accepted = shapes.verdicts(images, conditions)
    assert accepted.all()
    blank = np.zeros_like(images)  # the last 12 images drawn empty: they fail
    accepted = shapes.verdicts(np.concatenate([images[:9], blank[9:]]), conditions)
    categories = [c.category for c in conditions]
    judged = shapes.judge(np.concatenate([images[:9], blank[9:]]), conditions)
    assert shapes.category_scores(accepted, categories) == pytest.approx(judged) and judged["overall"] < 1


def test_the_paired_difference_is_the_difference_of_overalls_with_a_stratified_error() -> None:
    categories = ["a"] * 4 + ["b"] * 2
    a = np.array([1, 1, 0, 0, 1, 0], bool)
    b = np.array([1, 0, 1, 1, 1, 1], bool)
    d = paired_difference(a, b, categories)
    assert d.difference == pytest.approx(overall(b, categories) - overall(a, categories))
    assert d.difference == pytest.approx(((0 - 1 + 1 + 1) / 4 + (0 + 1) / 2) / 2)
    # per category: var(d_a) = var([0, -1, 1, 1]) = 11/12 over 4 images; var(d_b) = var([0, 1]) = 1/2 over 2
    assert d.standard_error == pytest.approx(math.sqrt((11 / 12 / 4 + 0.5 / 2) / 4))
    assert d.changed == 4 and d.images == 6 and d.z == pytest.approx(d.difference / d.standard_error)
    same = paired_difference(a, a, categories)
    assert (same.difference, same.standard_error, same.changed, same.z) == (0.0, 0.0, 0, 0.0)
    with pytest.raises(ValueError, match="6 and 5 verdicts for 6 prompts"):
        paired_difference(a, b[:5], categories)


def _result(tmp_path, rows: list[dict], prompts: int = 14):
    path = tmp_path / "image-cpu.json"
    path.write_text(json.dumps({"suite": "image", "prompts": prompts, "rows": rows}))
    return path


def test_bench_paired_compares_rows_with_verdicts_and_names_those_without(tmp_path, capsys) -> None:
    categories = [s.condition.category for s in shapes.eval_scenes(14)]
    base = np.zeros(14, bool)
    better = base.copy()
    better[:7] = True  # one image of each category (eval scenes cycle through them)
    rows = [
        {"model": "base", "steps": 1, "verdicts": pack_verdicts(base)},
        {"model": "better", "steps": 1, "verdicts": pack_verdicts(better)},
        {"model": "old", "steps": 1},
        {"model": "better", "steps": 2, "verdicts": pack_verdicts(~base)},
    ]
    compared = paired.main([str(_result(tmp_path, rows)), "--base", "base"])
    assert [c.model for c in compared] == ["base", "better"] and compared[0].judge is None
    expected = overall(better, categories) - overall(base, categories)
    assert isinstance(compared[1].judge, PairedDifference) and compared[1].judge.difference == pytest.approx(expected)
    assert compared[1].fd_difference is None and compared[1].fd_ratio is None  # rows without jackknife FDs
    out = capsys.readouterr().out
    assert "minus base's, paired over 14 prompts" in out and "better" in out and "rows from before session 25): old" in out


def test_fd_jackknife_leaves_each_group_out_and_pairs_up_between_rows() -> None:
    rng = np.random.default_rng(0)
    reference = rng.normal(size=(30, 4))
    near, far = reference + 0.1 * rng.normal(size=(30, 4)), reference + 1.0 + rng.normal(size=(30, 4))
    left = fd_jackknife(near, reference, groups=5)
    keep = np.arange(30) % 5 != 2
    assert len(left) == 5 and left[2] == pytest.approx(frechet_distance(near[keep], reference[keep]))
    assert len(fd_jackknife(near, reference, groups=40)) == 30  # fewer prompts than groups: one left out at a time
    assert jackknife_se([1.0, 1.0, 1.0]) == 0.0
    assert jackknife_se([0.0, 2.0]) == pytest.approx(math.sqrt(0.5 * 2))  # (G-1)/G * sum of squares about the mean
    far_left = np.asarray(fd_jackknife(far, reference, groups=5))
    assert (far_left > np.asarray(left)).all()  # paired: the far set is farther with every group left out
    with pytest.raises(ValueError, match="29 generated features for 30"):
        fd_jackknife(near[:29], reference)
    with pytest.raises(ValueError, match="needs 2 groups"):
        fd_jackknife(near, reference, groups=1)


def test_bench_paired_gives_fd_gaps_and_ratios_to_the_teacher_with_jackknife_errors(tmp_path, capsys) -> None:
    rows = [
        {"model": "t", "role": "teacher", "steps": 50, "fd": 20.0, "fd_jackknife": [19.0, 21.0, 20.0, 20.0]},
        {"model": "a", "steps": 1, "teacher": "t", "fd": 30.0, "fd_jackknife": [29.0, 31.0, 30.0, 30.0]},
        {"model": "b", "steps": 1, "teacher": "t", "fd": 33.0, "fd_jackknife": [32.0, 34.0, 33.5, 32.5]},
        {"model": "t", "role": "teacher", "steps": 1, "fd": 900.0, "fd_jackknife": [900.0, 900.0, 900.0, 900.0]},
    ]
    compared = paired.main([str(_result(tmp_path, rows)), "--base", "a"])
    base, b = compared  # the teacher's own one-step row is the ratios' reference, not a student: left out
    assert base.fd_difference is None and base.fd_ratio == pytest.approx(1.5)
    assert base.fd_ratio_se == pytest.approx(jackknife_se(np.array([29, 31, 30, 30]) / np.array([19, 21, 20, 20])))
    assert b.fd_difference == pytest.approx(3.0) and b.fd_difference_se == pytest.approx(jackknife_se([3, 3, 3.5, 2.5]))
    assert b.judge is None and b.fd_ratio == pytest.approx(1.65)
    out = capsys.readouterr().out
    assert "FD +3.00 ± " in out and "FD / teacher's 1.500 ± " in out
    # no teacher row at the asked steps: no ratios
    assert all(c.fd_ratio is None for c in paired.main([str(_result(tmp_path, rows)), "--base", "a", "--teacher-steps", "25"]))


def test_bench_paired_refuses_what_it_cannot_compare(tmp_path) -> None:
    rows = [{"model": "old", "steps": 1}, {"model": "new", "steps": 1, "verdicts": pack_verdicts(np.ones(14, bool))}]
    path = _result(tmp_path, rows)
    with pytest.raises(SystemExit, match="no row of nobody at 1 steps"):
        paired.main([str(path), "--base", "nobody"])
    with pytest.raises(SystemExit, match="keeps no per-image verdicts"):
        paired.main([str(path), "--base", "old"])
    with pytest.raises(SystemExit, match="no row of new at 4 steps"):
        paired.main([str(path), "--base", "new", "--steps", "4"])
    text = tmp_path / "text-cpu.json"
    text.write_text(json.dumps({"suite": "text", "prompts": 14, "rows": []}))
    with pytest.raises(SystemExit, match="compares image result rows, not 'text'"):
        paired.main([str(text), "--base", "new"])
    with pytest.raises(SystemExit, match="cannot read result file"):
        paired.main([str(tmp_path / "missing.json"), "--base", "new"])


def test_one_rows_standard_error_is_stratified_by_category() -> None:
    from bench.paired import overall_standard_error

    categories = ["a"] * 4 + ["b"] * 2
    accepted = np.array([1, 1, 0, 0, 1, 0], bool)
    # var_a = 1/3 over 4 images, var_b = 1/2 over 2: (1/12 + 1/4) / 2^2
    assert overall_standard_error(accepted, categories) == pytest.approx(math.sqrt((1 / 12 + 1 / 4) / 4))
    assert overall_standard_error(np.ones(6, bool), categories) == 0.0
