"""`bench image` end to end on the tiny 16 px checkpoint: every row gets an FD measured with the
shipped feature network, and the JSON and Markdown agree."""

import json
import math

import pytest

from bench import image as bench_image
from engines.errors import CheckpointError
from trainer.worlds import shapes


def run_bench(root, out, *extra: str) -> dict:
    return bench_image.main(
        [
            "--device=cpu",
            "--models=tiny-cpu",
            f"--checkpoints={root}",
            "--prompts=14",
            "--steps=1,2",
            "--latency-repeats=1",
            "--throughput-batch=2",
            f"--out={out}",
            *extra,
        ]
    )


def test_every_row_has_an_fd_above_the_resolution_floor(tiny_image_root, tmp_path):
    result = run_bench(tiny_image_root, tmp_path)
    assert [r["steps"] for r in result["rows"]] == [1, 2]
    floor = result["fd_floor_by_resolution"]["16"]  # the tiny model draws 16 px images
    for row in result["rows"]:
        assert row["resolution"] == 16 and math.isfinite(row["fd"]) and row["fd"] > floor > 0
    assert result["fd_network"]["id"] == "shapes-features"
    # 14 other real scenes: the small-sample baseline, large here (14 samples of 128-d features)
    assert math.isfinite(result["fd_real_vs_real"]) and result["fd_real_vs_real"] > 0
    table = (tmp_path / "image-cpu.md").read_text()
    assert "| FD |" in table
    for row in result["rows"]:
        assert f"| {row['fd']:.2f} |" in table
    assert json.loads((tmp_path / "image-cpu.json").read_text())["rows"][0]["fd"] == result["rows"][0]["fd"]
    # colour diversity where captions leave colour free: measured for every row, and for the renders
    assert "| free colours (bits) |" in table
    assert 0 <= result["free_colour_bits_renders"] <= 3 and "free colours = entropy" in result["notes"]
    for row in result["rows"]:
        assert 0 <= row["free_colour_bits"] <= 3 and f"| {row['free_colour_bits']:.2f} |" in table
    # FD split into what is drawn and how (the tiny model draws 16-px images: no split for it, and no column)
    assert all("fd_content" not in row for row in result["rows"]) and "| FD content |" not in table
    # and size diversity where captions leave size free (3 sizes: 1.58 bits at most)
    assert "| free sizes (bits) |" in table and "free sizes = the same for sizes" in result["notes"]
    assert 1.0 < result["free_size_bits_renders"] <= 1.585  # 14 prompts: few free objects
    for row in result["rows"]:
        assert 0 <= row["free_size_bits"] <= 1.585 and f"| {row['free_size_bits']:.2f} |" in table
    # why images fail, per category: the shares of each first reason add up to one, and match the pass rate
    for row in result["rows"]:
        assert set(row["failures"]) == {c for c in row["quality"] if c != "overall"}
        for category, shares in row["failures"].items():
            assert list(shares) == list(shapes.FAILURE_REASONS) and abs(sum(shares.values()) - 1) < 1e-3
            assert shares["pass"] == pytest.approx(row["quality"][category], abs=1e-4)
    # the per-image verdicts behind the scores, for paired comparisons (bench/paired.py): they give the row's judge
    from bench.paired import paired_difference, unpack_verdicts

    categories = [scene.condition.category for scene in shapes.eval_scenes(result["prompts"])]
    one, two = (unpack_verdicts(row["verdicts"], result["prompts"]) for row in result["rows"])
    for row, accepted in zip(result["rows"], (one, two)):
        assert shapes.category_scores(accepted, categories) == pytest.approx(row["quality"])
    d = paired_difference(one, two, categories)
    assert d.difference == pytest.approx(result["rows"][1]["quality"]["overall"] - result["rows"][0]["quality"]["overall"])
    # and the FD with each group of prompts left out (here 14 prompts: one at a time), for FD standard errors
    for row in result["rows"]:
        assert len(row["fd_jackknife"]) == result["prompts"] and all(math.isfinite(v) for v in row["fd_jackknife"])
        assert row["fd_se"] > 0 and math.isfinite(row["fd_se"])


def test_missing_feature_network_fails_before_generating(tiny_image_root, tmp_path):
    with pytest.raises(CheckpointError, match="train_features"):
        run_bench(tiny_image_root, tmp_path, f"--features={tmp_path / 'absent'}")
    assert not (tmp_path / "image-cpu.json").exists()


def test_a_cached_run_resumes_from_its_chunks_and_scores_the_same(tiny_image_root, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    first = run_bench(tiny_image_root, tmp_path / "a", f"--cache={cache}", "--chunk=4")
    dirs = sorted(p.name for p in cache.iterdir())
    assert len(dirs) == 2 and all(d.startswith("tiny-cpu-") for d in dirs)  # one per step count
    assert all(len(list((cache / d).glob("chunk-*.safetensors"))) == 4 for d in dirs)  # 14 prompts in chunks of 4
    assert [r["cached_chunks"] for r in first["rows"]] == [0, 0]
    # a run stopped after its first chunk of the 2-step row: delete the rest, then resume
    for extra in sorted((cache / dirs[1]).glob("chunk-*.safetensors"))[1:]:
        extra.unlink()
    again = run_bench(tiny_image_root, tmp_path / "b", f"--cache={cache}", "--chunk=4")
    assert [r["cached_chunks"] for r in again["rows"]] == [4, 1]
    for a, b in zip(first["rows"], again["rows"]):
        assert a["quality"] == b["quality"] and a["fd"] == pytest.approx(b["fd"], rel=1e-9)
    # a damaged chunk is refused with its path, not scored
    (cache / dirs[0] / "chunk-0000.safetensors").write_bytes(b"not a chunk")
    with pytest.raises(SystemExit, match="chunk-0000.safetensors cannot be read.*delete it"):
        run_bench(tiny_image_root, tmp_path / "c", f"--cache={cache}", "--chunk=4")
    # other settings find no chunks of theirs: a different chunk size is a different key
    other = run_bench(tiny_image_root, tmp_path / "d", f"--cache={cache}", "--chunk=5", "--steps=1")
    assert other["rows"][0]["cached_chunks"] == 0


def test_merge_keeps_rows_only_of_the_weights_measured_now(tiny_image_root, tmp_path):
    """Rows record a digest of the weights that made them; after retraining, --merge drops the old weights' rows
    instead of tabling them beside the new weights' as one model."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    root = tmp_path / "ck"
    shutil.copytree(tiny_image_root, root)
    first = run_bench(root, tmp_path)
    digest = first["rows"][0]["weights"]
    assert len(digest) == 64 and {r["weights"] for r in first["rows"]} == {digest}
    same = run_bench(root, tmp_path, "--steps=1", "--merge")  # same weights: the 2-step row stays
    assert [(r["steps"], r["weights"]) for r in same["rows"]] == [(1, digest), (2, digest)]
    assert "tiny-cpu (2 steps) kept" in same["notes"]
    (weights,) = (root / "tiny-cpu").rglob("*.safetensors")
    state = load_file(str(weights))
    first_key = next(iter(state))
    state[first_key] = state[first_key] + 0.01 * torch.ones_like(state[first_key])
    save_file(state, str(weights))
    retrained = run_bench(root, tmp_path, "--steps=1", "--merge")
    assert [r["steps"] for r in retrained["rows"]] == [1] and retrained["rows"][0]["weights"] != digest
    assert "tiny-cpu (2 steps) from an earlier run dropped: they measured other weights" in retrained["notes"]
    # the kept row names the run that made it (new rows are the file's own run: its created and git)
    assert same["rows"][1]["measured"] == {"created": first["created"], "git": first["git"]}
    assert "measured" not in same["rows"][0]
