"""`python -m bench rows`: rows one run measured move into another result file, keep the run that measured
them, and take a shipped id only when the checkpoint under that id holds the weights they measured."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from bench.__main__ import main as bench_main
from bench.image_cache import weights_digest
from bench.rows import main as rows_main


def _row(model: str, role: str, steps: int, overall: float, fd: float, weights: str = "w") -> dict:
    return {
        "model": model,
        "role": role,
        "method": "dmd2" if role == "student" else "flow_matching",
        "backend": "torch",
        "steps": steps,
        "nfe": steps,
        "quality": {"overall": overall, "position": overall / 2},
        "fd": fd,
        "latency_ms_p50": 20.0 * steps,
        "latency_ms_p90": 21.0 * steps,
        "throughput_per_s": 3000.0 / steps,
        "throughput_batch": 256,
        "weights": weights,
    }


def _result(path: Path, rows: list[dict], created: str, git: str, device: str = "NVIDIA H100", prompts: int = 560) -> Path:
    result = {
        "suite": "image",
        "device": device,
        "created": created,
        "git": git,
        "rows": rows,
        "summary": {},
        "notes": "560 held-out prompts.",
        "prompts": prompts,
        "fd_real_vs_real": 27.9,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result))
    return path


def _checkpoint(root: Path, name: str, value: float) -> str:
    path = root / name / "unet"
    path.mkdir(parents=True)
    save_file({"w": torch.full((4,), value)}, str(path / "diffusion_pytorch_model.safetensors"))
    return weights_digest(root / name)


@pytest.fixture
def files(tmp_path):
    teacher = [_row("shapes-teacher", "teacher", s, 0.9, 21.0) for s in (25, 50)]
    old_student = [_row("shapes-dmd2", "student", 1, 0.65, 79.0, weights="old")]
    dest = _result(tmp_path / "results" / "image-h100.json", teacher + old_student, "2026-12-05T16:48:09+00:00", "bdcd38d")
    digest = _checkpoint(tmp_path / "checkpoints", "shapes-dmd2", 1.0)
    variant = [_row("shapes-dmd2-v", "student", s, o, f, weights=digest) for s, o, f in ((1, 0.71, 37.2), (2, 0.84, 40.9))]
    source = _result(tmp_path / "run" / "image-h100.json", teacher + variant, "2026-12-05T22:21:00+00:00", "3fcdcfc")
    (tmp_path / "run" / "image-shapes-dmd2-v-h100.png").write_bytes(b"sheet")
    return dest, source, tmp_path / "checkpoints"


def test_renamed_rows_replace_the_old_weights_rows_and_keep_where_every_row_came_from(files) -> None:
    dest, source, checkpoints = files
    out = bench_main(
        [
            "rows",
            str(dest),
            "--add",
            str(source),
            "--models",
            "shapes-dmd2-v",
            "--rename",
            "shapes-dmd2-v=shapes-dmd2",
            "--checkpoints",
            str(checkpoints),
        ]
    )
    assert out == 0
    result = json.loads(dest.read_text())
    ids = [(r["model"], r["steps"]) for r in result["rows"]]
    assert ids == [("shapes-teacher", 25), ("shapes-teacher", 50), ("shapes-dmd2", 1), ("shapes-dmd2", 2)]
    student = [r for r in result["rows"] if r["model"] == "shapes-dmd2"]
    assert [r["quality"]["overall"] for r in student] == [0.71, 0.84]  # the new weights' rows, not the old 0.65
    assert {r["benched_as"] for r in student} == {"shapes-dmd2-v"}
    assert {r["measured"]["git"] for r in student} == {"3fcdcfc"}
    assert {r["measured"]["git"] for r in result["rows"] if r["role"] == "teacher"} == {"bdcd38d"}
    assert result["summary"]["student_best_1step_model"] == "shapes-dmd2"
    assert result["summary"]["student_best_1step_overall"] == 0.71
    assert result["fd_real_vs_real"] == 27.9 and result["prompts"] == 560  # the file's own fields survive
    assert "benched there as shapes-dmd2-v (the same weights)" in result["notes"]
    table = dest.with_suffix(".md").read_text()
    assert "| shapes-dmd2 | student | dmd2 |" in table and "shapes-dmd2-v |" not in table
    # the plots are drawn again from the new rows, beside the result file
    assert (dest.parent / "image-h100-judge-vs-fd.png").is_file() and (dest.parent / "image-h100-judge-vs-nfe.png").is_file()
    assert (dest.parent / "image-shapes-dmd2-h100.png").read_bytes() == b"sheet"


def test_rows_keep_their_name_without_rename_and_a_second_add_keeps_the_first(files, tmp_path) -> None:
    dest, source, checkpoints = files
    rows_main([str(dest), "--add", str(source), "--models", "shapes-dmd2-v", "--checkpoints", str(checkpoints)])
    other = _result(
        tmp_path / "run2" / "image-h100.json", [_row("shapes-x", "student", 1, 0.3, 90.0)], "2026-12-06T00:00:00+00:00", "aaaaaaa"
    )
    rows_main([str(dest), "--add", str(other), "--models", "shapes-x", "--checkpoints", str(checkpoints)])
    result = json.loads(dest.read_text())
    runs = {(r["model"], r["steps"]): r["measured"]["git"] for r in result["rows"]}
    assert runs[("shapes-dmd2-v", 1)] == "3fcdcfc" and runs[("shapes-x", 1)] == "aaaaaaa"
    assert runs[("shapes-dmd2", 1)] == "bdcd38d"  # nothing renamed onto it: the old row stays
    assert not any("benched_as" in r for r in result["rows"])


def test_a_rename_onto_other_weights_is_refused_and_the_file_is_left_alone(files) -> None:
    dest, source, checkpoints = files
    _checkpoint(checkpoints, "shapes-other", 2.0)
    before = dest.read_text()
    for target, message in (
        ("shapes-other", "does not hold the weights its rows at \\[1, 2\\] steps measured"),
        ("shapes-none", "no checkpoint"),
    ):
        args = ["--models", "shapes-dmd2-v", "--rename", f"shapes-dmd2-v={target}", "--checkpoints", str(checkpoints)]
        with pytest.raises(SystemExit, match=message):
            rows_main([str(dest), "--add", str(source), *args])
    assert dest.read_text() == before


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--models", "shapes-missing"], "no rows of 'shapes-missing'"),
        (["--models", "shapes-dmd2-v", "--rename", "shapes-dmd2-v"], "--rename takes OLD=NEW"),
        (["--models", "shapes-dmd2-v", "--rename", "shapes-teacher=shapes-dmd2"], "which --models does not take"),
    ],
)
def test_bad_arguments_get_a_clear_error(files, args, message) -> None:
    dest, source, checkpoints = files
    before = dest.read_text()
    with pytest.raises(SystemExit, match=message):
        rows_main([str(dest), "--add", str(source), "--checkpoints", str(checkpoints), *args])
    assert dest.read_text() == before


def test_rows_of_another_device_prompt_count_or_suite_are_refused(files, tmp_path) -> None:
    dest, _, checkpoints = files
    row = [_row("shapes-dmd2-v", "student", 1, 0.7, 37.0)]
    for name, kwargs, message in (
        ("h200", {"device": "NVIDIA H200"}, "device 'NVIDIA H200'"),
        ("few", {"prompts": 128}, "prompts 128"),
    ):
        other = _result(tmp_path / name / "image-h100.json", row, "2026-12-06T00:00:00+00:00", "aaaaaaa", **kwargs)
        with pytest.raises(SystemExit, match=message):
            rows_main([str(dest), "--add", str(other), "--models", "shapes-dmd2-v", "--checkpoints", str(checkpoints)])
    video = tmp_path / "video-h100.json"
    video.write_text(json.dumps({"suite": "video", "rows": []}))
    with pytest.raises(SystemExit, match="handles image results"):
        rows_main([str(dest), "--add", str(video), "--models", "x", "--checkpoints", str(checkpoints)])
    with pytest.raises(SystemExit, match="cannot read result file"):
        rows_main([str(dest), "--add", str(tmp_path / "missing.json"), "--models", "x"])


def test_a_row_an_older_merge_only_named_in_its_note_keeps_that_run(files) -> None:
    """Files from before per-row stamps say in their notes which run a kept row came from: that run, not the
    file's own, goes on the row."""
    dest, source, checkpoints = files
    result = json.loads(dest.read_text())
    result["notes"] += (
        " Rows of shapes-teacher (25 steps) kept from the run of 2026-12-01T10:00:00+00:00 (git abc1234) on a device"
        " of the same name."
    )
    dest.write_text(json.dumps(result))
    rows_main([str(dest), "--add", str(source), "--models", "shapes-dmd2-v", "--checkpoints", str(checkpoints)])
    runs = {(r["model"], r["steps"]): r["measured"]["git"] for r in json.loads(dest.read_text())["rows"]}
    assert runs[("shapes-teacher", 25)] == "abc1234" and runs[("shapes-teacher", 50)] == "bdcd38d"
