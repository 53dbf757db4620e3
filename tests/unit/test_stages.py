"""A run that continues a model under the same id reports the model's whole training on its card."""

from __future__ import annotations

import shutil

import pytest

from engines.card import ModelCard
from engines.errors import CheckpointError
from trainer.stages import continued_card, keep_parent_card, with_earlier_stages


def _save(
    tmp_path, name: str, card_id: str, seconds: float | None, data: dict, device: str | None = None, role: str = "teacher"
) -> str:
    card = ModelCard(
        id=card_id,
        modality="video",
        role=role,
        method="video_fm",
        default_steps=16,
        resolution=64,
        data=data,
        train_gpu_seconds=seconds,
        device=device,
    )
    card.save(tmp_path / name)
    return str(tmp_path / name)


def test_second_stage_adds_up_cost_and_lists_both_stages(tmp_path) -> None:
    first = _save(tmp_path, "a", "motion-teacher", 480.3, {"world": "motion", "clips_seen": 1000, "init_from": None})
    data, seconds = with_earlier_stages({"world": "motion", "clips_seen": 600}, 300.0, first, "motion-teacher", "runs/two")
    assert seconds == 780.3
    assert data["clips_seen"] == 1600
    assert [s["train_gpu_seconds"] for s in data["stages"]] == [480.3, 300.0]
    assert data["stages"][0]["clips_seen"] == 1000 and data["stages"][1] == {
        "config": "runs/two",
        "train_gpu_seconds": 300.0,
        "clips_seen": 600,
    }

    # a third stage continues the list rather than nesting it
    second = _save(tmp_path, "b", "motion-teacher", seconds, data)
    data3, seconds3 = with_earlier_stages({"clips_seen": 10}, 20.0, second, "motion-teacher", "runs/three")
    assert seconds3 == 800.3 and data3["clips_seen"] == 1610
    assert [s["config"] for s in data3["stages"][1:]] == ["runs/two", "runs/three"]
    assert "stages" not in data3["stages"][0]


def test_each_stage_names_the_device_it_ran_on(tmp_path) -> None:
    first = _save(tmp_path, "a", "text-cd4lm", 330.5, {"sequences_seen": 10}, device="NVIDIA H200")
    data, _ = with_earlier_stages({"sequences_seen": 5}, 270.2, first, "text-cd4lm", "runs/blocks", "NVIDIA H100 80GB HBM3")
    assert [s.get("device") for s in data["stages"]] == ["NVIDIA H200", "NVIDIA H100 80GB HBM3"]
    # a card that already lists stages keeps its own entries as they were
    second = _save(tmp_path, "b", "text-cd4lm", 600.7, data, device="NVIDIA H100 80GB HBM3")
    data3, _ = with_earlier_stages({"sequences_seen": 1}, 1.0, second, "text-cd4lm", "runs/three")
    assert [s.get("device") for s in data3["stages"]] == ["NVIDIA H200", "NVIDIA H100 80GB HBM3", None]


def test_other_ids_cpu_runs_and_fresh_models_are_single_stage(tmp_path) -> None:
    teacher = _save(tmp_path, "t", "motion-teacher", 480.3, {"clips_seen": 1000})
    fresh = {"clips_seen": 5}
    assert with_earlier_stages(fresh, 9.0, teacher, "motion-student", "r") == (fresh, 9.0)  # a student of it
    assert with_earlier_stages(fresh, None, teacher, "motion-teacher", "r") == (fresh, None)  # a CPU stage
    assert with_earlier_stages(fresh, 9.0, None, "motion-teacher", "r") == (fresh, 9.0)
    cpu = _save(tmp_path, "c", "motion-teacher", None, {"clips_seen": 1})
    assert with_earlier_stages(fresh, 9.0, cpu, "motion-teacher", "r") == (fresh, 9.0)  # no GPU cost to add


def test_a_student_fine_tuned_from_another_student_reports_both_runs(tmp_path) -> None:
    # e.g. the one-step specialist shapes-dmd2-1step-gan, started from the 1/2/4-step shapes-dmd2
    base = _save(tmp_path, "s", "shapes-dmd2", 1230.0, {"images_seen": 500, "init_from": None}, "NVIDIA H200", "student")
    data, seconds = with_earlier_stages({"images_seen": 80}, 541.4, base, "shapes-dmd2-1step-gan", "runs/gan", "NVIDIA H200")
    assert seconds == 1771.4 and data["images_seen"] == 580
    assert data["stages"][0]["model"] == "shapes-dmd2" and data["stages"][0]["train_gpu_seconds"] == 1230.0
    assert data["stages"][1] == {"config": "runs/gan", "train_gpu_seconds": 541.4, "images_seen": 80, "device": "NVIDIA H200"}


def test_each_stage_keeps_its_own_run_record_and_the_student_it_came_from(tmp_path) -> None:
    """A stage's ODE-pair set and starting point live at the card's top level until the next stage replaces it: the
    stage entry keeps them, also for a card written before entries did, and a chain of students names each one."""
    pairs_a = {"count": 4096, "made_in_s": 106.2}
    pairs_b = {"count": 4096, "made_in_s": 106.6}
    base = _save(tmp_path, "s", "stage-1", 800.0, {"images_seen": 5, "init_from": None, "ode_pairs": pairs_a}, role="student")
    data2, seconds2 = with_earlier_stages({"images_seen": 1}, 200.0, base, "stage-2", "runs/two")
    assert data2["stages"][0]["model"] == "stage-1" and data2["stages"][0]["ode_pairs"] == pairs_a
    second = _save(tmp_path, "t", "stage-2", seconds2, data2, role="student")
    own = {"images_seen": 2, "init_from": "checkpoints/stage-2", "ode_pairs": pairs_b}
    data3, _ = with_earlier_stages(own, 300.0, second, "stage-3", "runs/three")
    assert data3["stages"][1]["model"] == "stage-2"  # the student the third stage started from
    assert data3["stages"][2] == {
        "config": "runs/three",
        "train_gpu_seconds": 300.0,
        "images_seen": 2,
        "init_from": "checkpoints/stage-2",
        "ode_pairs": pairs_b,
    }
    third = _save(tmp_path, "u", "stage-3", 1300.0, data3, role="student")
    data4, _ = with_earlier_stages({"images_seen": 3}, 60.0, third, "stage-4", "runs/four")
    assert data4["stages"][2]["ode_pairs"] == pairs_b and data4["stages"][2]["model"] == "stage-3"
    assert data4["stages"][0]["ode_pairs"] == pairs_a
    # a card from before stage entries kept their record: its last stage takes it from the top level
    old = dict(data3, stages=[{k: v for k, v in s.items() if k not in ("ode_pairs", "init_from")} for s in data3["stages"]])
    legacy = _save(tmp_path, "v", "stage-3", 1300.0, old, role="student")
    data5, _ = with_earlier_stages({"images_seen": 3}, 60.0, legacy, "stage-3", "runs/five")
    assert data5["stages"][2]["ode_pairs"] == pairs_b and data5["stages"][2]["init_from"] == "checkpoints/stage-2"
    assert "model" not in data5["stages"][2]  # a further stage under the same id names no other model


def test_a_kept_parent_card_reports_the_stages_after_the_folder_is_gone(tmp_path) -> None:
    parent = _save(tmp_path, "parent", "shapes-dmd2", 600.0, {"images_seen": 100}, role="student")
    run = tmp_path / "run"
    keep_parent_card(parent, run)
    shutil.rmtree(parent)
    data, seconds = with_earlier_stages({"images_seen": 50}, 60.0, parent, "shapes-dmd2", str(run))
    assert seconds == 660.0 and data["images_seen"] == 150 and len(data["stages"]) == 2

    # gone with no copy: a clear error rather than a card that silently forgets its earlier training
    with pytest.raises(CheckpointError, match="is gone and .* keeps no copy of its card"):
        with_earlier_stages({"images_seen": 50}, 60.0, parent, "shapes-dmd2", str(tmp_path / "other-run"))


def test_a_resumed_run_keeps_the_card_it_started_from(tmp_path) -> None:
    parent = _save(tmp_path, "parent", "shapes-dmd2", 600.0, {"images_seen": 100}, role="student")
    run = tmp_path / "run"
    keep_parent_card(parent, run)
    _save(tmp_path, "parent", "shapes-dmd2", 900.0, {"images_seen": 999}, role="student")  # re-exported meanwhile
    keep_parent_card(parent, run)  # the resumed segment
    assert continued_card(parent, "shapes-dmd2", run).train_gpu_seconds == 600.0
    assert continued_card(parent, "shapes-dmd2").train_gpu_seconds == 900.0  # without the run: the folder's


def test_a_folder_without_our_card_has_no_earlier_stages(tmp_path) -> None:
    foreign = tmp_path / "diffusers-unet"
    (foreign / "unet").mkdir(parents=True)
    keep_parent_card(str(foreign), tmp_path / "run")  # nothing to keep
    assert not (tmp_path / "run").exists()
    assert continued_card(str(foreign), "shapes-dmd2", tmp_path / "run") is None
    keep_parent_card(None, tmp_path / "fresh-run")  # a run from nothing keeps no card
    assert not (tmp_path / "fresh-run").exists() and continued_card(None, "x") is None
