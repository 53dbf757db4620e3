"""bench.common.model_names: which checkpoints a suite measures, checked before anything is timed."""

from argparse import Namespace

import pytest

from bench.common import bench_registry, model_names


def _registry():
    return bench_registry(Namespace(checkpoints=[], device="cpu"))


def test_named_models_come_back_in_order_and_none_means_every_one_of_the_modality() -> None:
    registry = _registry()
    assert model_names(Namespace(models="shapes-dmd2,shapes-teacher"), registry, "image") == ["shapes-dmd2", "shapes-teacher"]
    every = model_names(Namespace(models=""), registry, "image")
    assert {"shapes-teacher", "shapes-dmd2"} <= set(every)
    assert all(registry.card(m).modality == "image" for m in every)


@pytest.mark.parametrize("models", ["shapes-teacher,shapes-guidance", "shapes-teacher,text-teacher", "shapes-techer"])
def test_an_unknown_or_other_modality_model_stops_the_suite_before_it_starts(models: str) -> None:
    with pytest.raises(SystemExit, match="not image checkpoints") as stopped:
        model_names(Namespace(models=models), _registry(), "image")
    assert "known: " in str(stopped.value) and "shapes-teacher" in str(stopped.value)


def test_merge_keeps_rows_not_measured_again_and_refuses_other_setups(tmp_path) -> None:
    import json

    from bench.image import kept_rows, merged

    path = tmp_path / "image-h100.json"
    dmd2 = {("shapes-dmd2", k) for k in (1, 2, 4)}
    assert kept_rows(path, dmd2, "NVIDIA H100", 560) == ([], "")  # nothing to merge with
    rows = [{"model": "shapes-teacher", "steps": s} for s in (1, 25)] + [{"model": "shapes-dmd2", "steps": 1}]
    earlier = {"device": "NVIDIA H100", "prompts": 560, "created": "2026-11-26T17:35:54+00:00", "git": "ae010fa", "rows": rows}
    path.write_text(json.dumps(earlier))
    kept, note = kept_rows(path, dmd2, "NVIDIA H100", 560)
    assert _ids(kept) == _ids(rows[:2])  # the model run now replaces its own old rows
    assert {r["measured"]["git"] for r in kept} == {"ae010fa"}  # stamped with the run that measured them
    assert "shapes-teacher (1/25 steps)" in note and "2026-11-26T17:35:54" in note and "ae010fa" in note
    # the same model at other step counts: only the re-measured step count is replaced
    kept, note = kept_rows(path, {("shapes-teacher", 25), ("shapes-teacher", 50)}, "NVIDIA H100", 560)
    assert _ids(kept) == _ids([rows[0], rows[2]]) and "shapes-teacher (1 steps), shapes-dmd2 (1 steps)" in note
    new = [{"model": "shapes-teacher", "steps": 50}, {"model": "shapes-teacher", "steps": 25}]
    table = merged(kept, new, ["shapes-teacher"])
    assert [(r["model"], r["steps"]) for r in table] == [
        ("shapes-dmd2", 1),
        ("shapes-teacher", 1),
        ("shapes-teacher", 25),
        ("shapes-teacher", 50),
    ]
    assert kept_rows(path, {(r["model"], r["steps"]) for r in rows}, "NVIDIA H100", 560) == ([], "")
    for device, prompts in (("NVIDIA H200", 560), ("NVIDIA H100", 128)):
        with pytest.raises(SystemExit, match="cannot share a table"):
            kept_rows(path, dmd2, device, prompts)


def test_merge_drops_rows_of_a_model_whose_weights_changed(tmp_path) -> None:
    """A retrained teacher benched again at 1-8 steps must not keep its old weights' 25-step row."""
    import json

    from bench.image import kept_rows

    path = tmp_path / "image-cpu.json"
    rows = [
        {"model": "shapes-teacher", "steps": 8, "weights": "old"},
        {"model": "shapes-teacher", "steps": 25, "weights": "old"},
        {"model": "shapes-teacher", "steps": 50},  # from before rows recorded their weights
        {"model": "shapes-dmd2", "steps": 1},  # not measured now: kept, digest or not
    ]
    earlier = {"device": "cpu", "prompts": 560, "created": "2026-12-04T23:01:55+00:00", "git": "5bdf6fb", "rows": rows}
    path.write_text(json.dumps(earlier))
    measured = {("shapes-teacher", 8)}
    kept, note = kept_rows(path, measured, "cpu", 560, {"shapes-teacher": "new"})
    assert _ids(kept) == _ids([rows[3]])
    assert "shapes-dmd2 (1 steps) kept" in note and "shapes-teacher (25/50 steps) from an earlier run dropped" in note
    # the same weights: their rows stay; a digest-less row of a re-measured model cannot be vouched for
    kept, note = kept_rows(path, measured, "cpu", 560, {"shapes-teacher": "old"})
    assert _ids(kept) == _ids([rows[1], rows[3]]) and "shapes-teacher (50 steps) from an earlier run dropped" in note
    assert _ids(kept_rows(path, measured, "cpu", 560)[0]) == _ids(rows[1:])  # no digests given: the old behaviour


def test_merge_keeps_each_row_s_own_run_through_later_merges(tmp_path) -> None:
    """A row kept by one merge and kept again by the next still names the run that measured it, not the file's
    latest run: from its `measured` stamp, or for older files from the note the earlier merge wrote."""
    import json

    from bench.image import kept_rows

    path = tmp_path / "image-cpu.json"
    note = (
        "560 held-out prompts. Rows of shapes-dmd2 (1/2/4 steps), shapes-teacher (25 steps) kept from the run of "
        "2026-12-04T23:01:55+00:00 (git 5bdf6fb) on a device of the same name."
    )
    rows = [{"model": "shapes-dmd2", "steps": k} for k in (1, 2, 4)] + [
        {"model": "shapes-teacher", "steps": 25},
        {"model": "shapes-teacher", "steps": 50},  # measured by the file's own run
        {"model": "shapes-scm", "steps": 1, "measured": {"created": "2026-12-01T10:00:00+00:00", "git": "abc1234"}},
    ]
    earlier = {"device": "cpu", "prompts": 560, "created": "2026-12-05T03:33:19+00:00", "git": "c96985e", "notes": note}
    path.write_text(json.dumps(earlier | {"rows": rows}))
    kept, note = kept_rows(path, {("shapes-teacher", 8)}, "cpu", 560)
    runs = {(r["model"], r["steps"]): r["measured"]["git"] for r in kept}
    assert runs == {
        ("shapes-dmd2", 1): "5bdf6fb",
        ("shapes-dmd2", 2): "5bdf6fb",
        ("shapes-dmd2", 4): "5bdf6fb",
        ("shapes-teacher", 25): "5bdf6fb",
        ("shapes-teacher", 50): "c96985e",
        ("shapes-scm", 1): "abc1234",
    }
    first_run = "kept from the run of 2026-12-04T23:01:55+00:00 (git 5bdf6fb)"
    assert f"shapes-dmd2 (1/2/4 steps), shapes-teacher (25 steps) {first_run}" in note
    assert "shapes-teacher (50 steps) kept from the run of 2026-12-05T03:33:19+00:00 (git c96985e)" in note
    assert "shapes-scm (1 steps) kept from the run of 2026-12-01T10:00:00+00:00 (git abc1234)" in note


def _ids(rows: list[dict]) -> list[tuple[str, int]]:
    return [(r["model"], r["steps"]) for r in rows]


def _image_row(model: str, role: str, steps: int, overall: float, fd: float) -> dict:
    return {"model": model, "role": role, "steps": steps, "quality": {"overall": overall}, "fd": fd, "latency_ms_p50": 1.0}


def test_image_summary_says_whether_the_best_one_step_student_meets_the_target() -> None:
    from bench.image import summarise

    teacher = [_image_row("t", "teacher", 25, 0.88, 17.0), _image_row("t", "teacher", 50, 0.87, 20.0)]
    weak = summarise([*teacher, _image_row("a", "student", 1, 0.65, 79.0), _image_row("b", "student", 1, 0.51, 170.0)])
    assert (weak["student_best_1step_model"], weak["student_best_1step_overall"]) == ("a", 0.65)
    assert weak["teacher_50step_fd"] == 20.0 and weak["one_step_target_met"] is False
    # a 4-step row scoring higher is not a one-step result
    assert summarise([*teacher, _image_row("a", "student", 4, 0.95, 10.0)]).get("student_best_1step_model") is None
    assert summarise([*teacher, _image_row("a", "student", 1, 0.871, 29.9)])["one_step_target_met"] is True
    assert summarise([*teacher, _image_row("a", "student", 1, 0.869, 29.9)])["one_step_target_met"] is False  # judge
    assert summarise([*teacher, _image_row("a", "student", 1, 0.90, 30.1)])["one_step_target_met"] is False  # FD
    assert "one_step_target_met" not in summarise([teacher[0], _image_row("a", "student", 1, 0.9, 1.0)])  # no 50 steps
    # the verdict names the prompt count its FDs came from (FD's bias moves with it)
    counted = [{**row, "prompts": 560} for row in (*teacher, _image_row("a", "student", 1, 0.871, 29.9))]
    assert summarise(counted)["one_step_target_prompts"] == 560 and "one_step_target_prompts" not in weak


def test_image_summary_names_the_best_one_step_student_within_the_fd_limit() -> None:
    """The judge-best one-step student and the one closest to both targets can differ: the summary names both, and
    the target counts as met when any one student meets both halves."""
    from bench.image import summarise

    teacher = [_image_row("t", "teacher", 25, 0.88, 17.0), _image_row("t", "teacher", 50, 0.87, 20.0)]
    sharp = _image_row("sharp", "student", 1, 0.74, 60.0)  # best judge, FD far over 30.0
    broad = _image_row("broad", "student", 1, 0.73, 29.5)
    blurry = _image_row("blurry", "student", 1, 0.60, 25.0)
    summary = summarise([*teacher, sharp, broad, blurry])
    assert summary["student_best_1step_model"] == "sharp"
    assert summary["one_step_fd_limit"] == 30.0 and abs(summary["one_step_judge_floor"] - 0.87) < 1e-12
    assert summary["students_1step_within_fd_limit"] == ["blurry", "broad"]
    assert (summary["student_best_1step_within_fd_limit"], summary["student_best_1step_within_fd_limit_overall"]) == (
        "broad",
        0.73,
    )
    assert summary["one_step_target_met"] is False
    # a student meeting both halves meets the target even when another scores a higher judge
    good = _image_row("good", "student", 1, 0.875, 29.0)
    met = summarise([*teacher, _image_row("sharper", "student", 1, 0.95, 60.0), good])
    assert met["student_best_1step_model"] == "sharper" and met["one_step_target_met"] is True
    assert met["student_best_1step_within_fd_limit"] == "good"
    # nobody within the limit: no such model is named
    none = summarise([*teacher, sharp])
    assert none["students_1step_within_fd_limit"] == [] and "student_best_1step_within_fd_limit" not in none


def test_merge_drops_rows_of_a_checkpoint_replaced_under_the_same_id_even_when_not_measured(tmp_path) -> None:
    """Benching only the teacher again must not carry a replaced student's rows forward under the student's id."""
    import json

    from bench.image import kept_rows

    path = tmp_path / "image-cpu.json"
    rows = [
        {"model": "shapes-dmd2", "steps": 1, "weights": "before"},  # the student's predecessor
        {"model": "shapes-dmd2", "steps": 2},  # no digest: cannot be told apart, stays
        {"model": "shapes-dmd2-variant", "steps": 1, "weights": "v"},  # no checkpoint of that id now: stays
        {"model": "shapes-teacher", "steps": 25, "weights": "t"},
    ]
    earlier = {"device": "cpu", "prompts": 560, "created": "2026-12-05T03:33:19+00:00", "git": "c96985e", "rows": rows}
    path.write_text(json.dumps(earlier))
    now = {"shapes-teacher": "t", "shapes-dmd2": "after"}
    kept, note = kept_rows(path, {("shapes-teacher", 50)}, "cpu", 560, now)
    assert _ids(kept) == _ids(rows[1:])
    assert "shapes-dmd2 (1 steps) from an earlier run dropped: they measured other weights" in note
    kept, _ = kept_rows(path, {("shapes-teacher", 50)}, "cpu", 560, {"shapes-teacher": "t", "shapes-dmd2": "before"})
    assert _ids(kept) == _ids(rows)


def test_cards_quote_only_rows_of_the_weights_they_hold(tiny_image_root, tmp_path) -> None:
    import json
    import shutil

    from bench.image import update_cards
    from bench.image_cache import weights_digest
    from engines.registry import Registry

    root = tmp_path / "ck"
    shutil.copytree(tiny_image_root / "tiny-cpu", root / "tiny-cpu")
    digest = weights_digest(root / "tiny-cpu")

    def row(steps: int, overall: float, weights: str | None) -> dict:
        quality = {"overall": overall, "position": 0.5}
        return {"model": "tiny-cpu", "steps": steps, "quality": quality, "fd": 9.0, "latency_ms_p50": 1.0,
                "throughput_per_s": 2.0, "weights": weights}  # fmt: skip

    source = tmp_path / "image-cpu.json"
    update_cards(Registry([root], device="cpu"), [row(1, 0.3, "other"), row(2, 0.6, digest), row(4, 0.7, None)], source)
    metrics = json.loads((root / "tiny-cpu" / "card.json").read_text())["metrics"]
    assert "image-cpu @ 1 steps" not in metrics  # measured other weights
    assert metrics["image-cpu @ 2 steps"]["overall"] == 0.6 and metrics["image-cpu @ 4 steps"]["overall"] == 0.7
    assert metrics["source"] == "bench/results/image-cpu.json"
    assert "image-cpu @ 2 steps" in (root / "tiny-cpu" / "README.md").read_text()


def test_image_summary_gives_the_fd_ratio_of_the_best_student_within_the_limit_with_its_error() -> None:
    from bench.image import summarise
    from bench.paired import jackknife_se

    fifty = _image_row("t", "teacher", 50, 0.87, 20.0) | {"fd_jackknife": [19.0, 21.0, 20.0]}
    teacher = [_image_row("t", "teacher", 25, 0.88, 17.0), fifty]
    broad = _image_row("broad", "student", 1, 0.73, 29.5) | {"fd_jackknife": [29.0, 30.0, 29.5]}
    summary = summarise([*teacher, broad])
    assert summary["student_best_1step_within_fd_limit_fd_ratio"] == 29.5 / 20.0
    expected = jackknife_se([29.0 / 19.0, 30.0 / 21.0, 29.5 / 20.0])
    assert summary["student_best_1step_within_fd_limit_fd_ratio_se"] == expected > 0
    # rows from before session 25 keep no jackknife FDs: no error is made up
    older = summarise([*teacher, _image_row("broad", "student", 1, 0.73, 29.5)])
    assert "student_best_1step_within_fd_limit_fd_ratio_se" not in older
