"""The diagnostic probes' measures, checked on the shapes world's own renders, where the answer is known."""

from __future__ import annotations

import dataclasses
import importlib.util
import random
import sys

import numpy as np
import pytest
import torch

from tests.conftest import REPO
from trainer.worlds import shapes


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses in the script look their module up while it loads
    spec.loader.exec_module(module)
    return module


layout = _load("probe_layout_by_step")
diversity = _load("probe_colour_diversity")
OPPOSITE = {"left_of": "right_of", "right_of": "left_of", "above": "below", "below": "above"}


def test_layout_measure_reads_every_rendered_relation_and_rejects_its_opposite() -> None:
    rng = random.Random(3)
    scenes = [shapes.sample_scene(rng, "position") for _ in range(40)]
    images = shapes.to_uint8(shapes.render(scenes))
    assert all(layout.relation_agrees(image, s.condition) for image, s in zip(images, scenes))
    flipped = [dataclasses.replace(s.condition, relation=OPPOSITE[s.condition.relation]) for s in scenes]
    assert not any(layout.relation_agrees(image, c) for image, c in zip(images, flipped))


def test_layout_measure_refuses_a_condition_without_a_relation() -> None:
    scene = shapes.sample_scene(random.Random(0), "single_object")
    with pytest.raises(ValueError, match="needs a position scene"):
        layout.relation_agrees(shapes.to_uint8(shapes.render([scene]))[0], scene.condition)


def test_colour_report_names_the_entropy_and_rounded_shares() -> None:
    line = diversity.describe("renders", {colour: 1 / 8 for colour in shapes.COLOR_NAMES})
    assert line.startswith("renders: entropy 3.00 bits {") and "'red': 0.12" in line
    assert diversity.describe("one", {"yellow": 1.0}) == "one: entropy 0.00 bits {'yellow': 1.0}"


fd_gap = _load("probe_fd_gap")


def test_fd_gap_reads_renders_back_into_the_same_renders() -> None:
    scenes = [shapes.sample_scene(random.Random(i)) for i in range(60)]
    images = shapes.to_uint8(shapes.render(scenes))
    detections = shapes.detect_all(images)
    clean, shapeless = shapes.render_detections(detections)
    assert shapeless == 0 and clean.shape == images.shape
    # the read-back keeps every object, its colour and place: at most anti-aliased edge pixels move
    differs = (abs(clean.astype(int) - images.astype(int)).max(axis=3) > 60).mean()
    assert differs < 0.01
    drawn = fd_gap.marginals(detections)
    assert sum(drawn["objects"].values()) == pytest.approx(1.0, abs=0.03)
    assert sum(drawn["colour"].values()) == pytest.approx(1.0, abs=0.05) and drawn["colour_bits"] > 2.5
    assert sum(len(s.objects) for s in scenes) == sum(len(d) for d in detections)


def test_fd_gap_draws_shapeless_blobs_as_circles_and_counts_them() -> None:
    blob = shapes.Detection(None, "red", "large", 20.0, 30.0, 300)
    clean, shapeless = shapes.render_detections([[blob], []])
    assert shapeless == 1
    circle = shapes.to_uint8(shapes.render([shapes.Scene((shapes.Obj("circle", "red", "large", 20.0, 30.0),), None)]))[0]
    assert (clean[0] == circle).all() and (clean[1] == clean[1][0, 0]).all()  # the empty image is background only


shift_probe = _load("probe_position_by_shift")  # imports probe_layout_by_step, loaded above


def test_shift_probe_samples_at_each_shift_and_scores_it(tiny_image_root, monkeypatch) -> None:
    from engines.image import ImageEngine

    seen = []
    real = ImageEngine.sample_prompts

    def spy(self, *args, **kwargs):
        seen.append(float(self.scheduler.config.shift))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(ImageEngine, "sample_prompts", spy)
    rows = shift_probe.main(["--checkpoint", str(tiny_image_root / "tiny-cpu"), "--n", "2", "--shifts", "1,4.5", "--steps", "2"])
    assert seen == [1.0, 4.5] and [r["shift"] for r in rows] == [1.0, 4.5]
    assert all(0 <= r["position"] <= 1 and r["order_agrees"] in (0.0, 0.5, 1.0) for r in rows)
    for bad in (["--shifts", "1,x"], ["--shifts", "0"], ["--n", "0"]):
        with pytest.raises(SystemExit):
            shift_probe.main(bad)


drift_probe = _load("probe_video_drift")


def test_drift_probe_reports_the_bench_long_horizon_record_per_model(tiny_video_root) -> None:
    from tests.conftest import one_thread

    with one_thread():
        results = drift_probe.main(["--checkpoints", str(tiny_video_root), "--models", "tiny-video-student", "--clips", "1"])
    record = results["tiny-video-student"]
    assert record["clips"] == 1 and len(record["frame_score_by_16"]) == 14
    assert record["drift_points"] == round(100 * (record["early"]["overall"] - record["late"]["overall"]), 2)
    for bad in (["--models", "no-such-model"], ["--models", "tiny-video-student", "--clips", "0"]):
        with pytest.raises(SystemExit):
            drift_probe.main(["--checkpoints", str(tiny_video_root), *bad])


motion_probe = _load("probe_video_motion")


def test_motion_probe_bands_add_up_and_read_the_worlds_speeds() -> None:
    from trainer.worlds import motion

    clips = motion.eval_clips(12, 16, seed=77)
    table = motion_probe.speed_table(motion.mover_speeds(motion.to_uint8(motion.render_clips(clips, 16)), clips))
    for stated, row in table.items():
        assert row["movers"] >= 3 and row["untracked"] == 0, (stated, row)
        assert sum(row[name] for name, *_ in motion_probe.BANDS) == pytest.approx(1.0)
    assert table["slowly"]["slow"] == 1.0 and table["quickly"]["quick"] == 1.0
    empty = motion_probe.speed_table([("slowly", float("nan"))])
    assert empty["slowly"] == {
        "movers": 1,
        "untracked": 1,
        "median_px": None,
        "static": None,
        "slow": None,
        "quick": None,
        "beyond": None,
    }
    assert empty["quickly"]["movers"] == 0
    seen = motion.objects_per_frame(motion.to_uint8(motion.render_clips(clips, 16)))
    counts = motion_probe.count_table(seen, clips)
    assert sum(row["clips"] for row in counts.values()) == 12
    assert all(row["median_objects"] == int(k) and row["fewer"] == 0 for k, row in counts.items())
    merged = motion_probe.count_table(np.ones_like(seen), clips)  # one object in every frame
    assert merged["1"]["fewer"] == 0 and all(merged[k]["fewer"] == 1.0 for k in merged if k != "1")


def test_motion_probe_samples_each_model_as_the_bench_does(tiny_video_root) -> None:
    from tests.conftest import one_thread

    args = ["--checkpoints", str(tiny_video_root), "--models", "tiny-video,tiny-video-student", "--clips", "2"]
    with one_thread():
        results = motion_probe.main(args)
    assert results["tiny-video"]["mode"] == "clip" and results["tiny-video-student"]["mode"] == "stream"
    assert results["tiny-video-student"]["steps"] == 2  # the card's default
    for record in results.values():
        assert 0 <= record["overall"] <= 1 and set(record["by_stated_speed"]) == {"slowly", "quickly"}
        assert sum(row["clips"] for row in record["objects_by_movers_named"].values()) == 2
    for bad in (["--models", "no-such-model"], ["--models", "tiny-video", "--steps", "0"]):
        with pytest.raises(SystemExit):
            motion_probe.main(["--checkpoints", str(tiny_video_root), *bad])


latency_probe = _load("probe_video_latency")


def test_latency_probe_splits_a_streaming_first_frame_on_cpu(tiny_video_root) -> None:
    from tests.conftest import one_thread

    args = ["--checkpoints", str(tiny_video_root), "--models", "tiny-video-student", "--steps", "1,2", "--repeats", "2"]
    with one_thread():
        (record,) = latency_probe.main(args)
    assert record["model"] == "tiny-video-student" and record["backend"] == "torch" and record["device"] == "cpu"
    # two network calls cost more than one, and one call costs less than a whole first frame at one step
    assert record["first_frame_ms_2step"] > record["network_call_ms"] > 0
    assert record["first_frame_ms_1step"] > 0 and record["frames_to_pil_ms"] > 0
    assert record["cuda_kernels"] == 0 and record["graph_launches"] == 0  # no GPU here: host ops only
    assert record["profile_steps"] == 2 and len(record["top_host_ops"]) > 3
    for bad in (["--models", "no-such-model"], ["--repeats", "0"], ["--steps", "0"]):
        with pytest.raises(SystemExit):
            latency_probe.main(["--checkpoints", str(tiny_video_root), "--models", "tiny-video-student", *bad])


failures = _load("probe_judge_failures")


def test_failure_probe_passes_renders_and_names_each_kind_of_failure() -> None:
    rng = random.Random(5)
    scenes = [shapes.sample_scene(rng, category) for category in shapes.CATEGORIES for _ in range(6)]
    images = shapes.to_uint8(shapes.render(scenes))
    conditions = [s.condition for s in scenes]
    table = shapes.failure_shares(images, conditions)
    assert set(table) == set(shapes.CATEGORIES)
    assert all(shares["pass"] == 1.0 and abs(sum(shares.values()) - 1) < 1e-9 for shares in table.values())
    blank = shapes.failure_shares(np.zeros_like(images), conditions)  # nothing drawn: every image's count is off
    assert all(set(shares) == set(shapes.FAILURE_REASONS) and shares["count"] == 1.0 for shares in blank.values())
    position = [(image, s.condition) for image, s in zip(images, scenes) if s.condition.category == "position"]
    for image, condition in position:
        flipped = dataclasses.replace(condition, relation=OPPOSITE[condition.relation])
        assert shapes.failure_reason(shapes.detect(image), flipped) == "relation or binding"
    single = next((image, s.condition) for image, s in zip(images, scenes) if s.condition.category == "single_object")
    spec = single[1].specs[0]
    other = next(name for name in shapes.SHAPES if name != spec.shape)
    wrong = dataclasses.replace(single[1], specs=(dataclasses.replace(spec, shape=other),))
    assert shapes.failure_reason(shapes.detect(single[0]), wrong) == "shape"


def test_failure_probe_reads_a_bench_cache_and_refuses_what_does_not_fit(tmp_path, capsys) -> None:
    import torch
    from safetensors.torch import save_file

    renders = shapes.render(shapes.eval_scenes(8))
    cache = tmp_path / "shapes-x-1steps-key"
    cache.mkdir()
    save_file({"images": renders[:5] * 2 - 1}, str(cache / "chunk-0000.safetensors"))
    save_file({"images": (renders[5:] * 2 - 1).to(torch.float16)}, str(cache / "chunk-0001.safetensors"))
    failures.main([str(cache), "--prompts", "8"])
    out = capsys.readouterr().out
    assert out.startswith("shapes-x-1steps-key\n") and "relation or binding" in out
    rows = [line.split() for line in out.splitlines()[2:]]
    assert rows and all(float(row[1]) == 1.0 for row in rows)  # the world's renders pass
    with pytest.raises(SystemExit, match="holds 8 images, not the 12"):
        failures.main([str(cache), "--prompts", "12"])
    with pytest.raises(SystemExit, match="no bench cache chunks"):
        failures.main([str(tmp_path), "--prompts", "8"])
    with pytest.raises(ValueError, match="2 images but 1 conditions"):
        shapes.failure_shares(np.zeros((2, 64, 64, 3), np.uint8), [shapes.eval_scenes(1)[0].condition])


regression_scales = _load("probe_regression_scales")


def test_regression_scales_probe_splits_a_students_gap_by_block_size(tiny_image_root) -> None:
    root = str(tiny_image_root / "tiny-cpu")
    (result,) = regression_scales.main([root, "--teacher", root, "--pairs", "4", "--steps", "2"])
    shares = result.shares()
    assert result.student == "tiny-cpu" and shares[1] == 1.0 and set(shares) >= {1, 2, 4}
    assert all(0 < share <= 1 for share in shares.values())
    ordered = [shares[p] for p in sorted(shares)]
    assert all(a >= b - 1e-12 for a, b in zip(ordered, ordered[1:]))  # nested block means never add distance
    for bad in (["--pairs", "0", root], [str(tiny_image_root), "--teacher", root]):
        with pytest.raises(SystemExit):
            regression_scales.main(bad)


def test_failure_probe_by_size_counts_shapeless_objects_per_detected_size(tmp_path, capsys) -> None:
    from safetensors.torch import save_file

    renders = shapes.to_uint8(shapes.render(shapes.eval_scenes(14)))
    table = failures.shapeless_by_size(renders)
    assert list(table) == list(shapes.SIZE_NAMES)
    found = sum(row[0] for row in table.values())
    assert found == sum(len(d) for d in shapes.detect_all(renders)) > 14
    assert abs(sum(row[1] for row in table.values()) - 1) < 1e-9
    assert all(row[2] == 0.0 for row in table.values())  # every rendered object fits its shape

    # a blob no template fits (a ring), drawn large on the background, counts as a large shapeless object
    ring = np.full((1, 64, 64, 3), shapes.BACKGROUND, np.uint8)
    yy, xx = np.mgrid[:64, :64]
    radius = np.hypot(yy - 32, xx - 32)
    ring[0][(radius > 10) & (radius < 16)] = shapes.COLORS["red"][0]
    blob = failures.shapeless_by_size(ring)
    assert sum(row[0] for row in blob.values()) == 1 and max(row[2] for row in blob.values()) == 1.0

    cache = tmp_path / "shapes-x-1steps-key"
    cache.mkdir()
    save_file({"images": torch_images(renders)}, str(cache / "chunk-0000.safetensors"))
    failures.main([str(cache), "--prompts", "14", "--by-size"])
    out = capsys.readouterr().out
    assert "objects by size" in out and "no shape fits" in out
    failures.main([str(cache), "--prompts", "14"])
    assert "objects by size" not in capsys.readouterr().out


def torch_images(pixels: np.ndarray):
    """uint8 (N, H, W, 3) images as a bench cache keeps them: (N, 3, H, W) in [-1, 1]."""
    import torch

    return torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 127.5 - 1


paired_probe = _load("probe_judge_paired")


def test_paired_probe_compares_cached_images_with_a_base(tmp_path, capsys) -> None:
    from safetensors.torch import save_file

    renders = shapes.render(shapes.eval_scenes(14)) * 2 - 1  # as the bench caches them
    for name, images in (("base", renders), ("same", renders.clone()), ("blank", renders[:, :, :1, :1].expand_as(renders))):
        (tmp_path / name).mkdir()
        save_file({"images": images.contiguous()}, str(tmp_path / name / "chunk-0000.safetensors"))
    out = paired_probe.main([str(tmp_path / "base"), str(tmp_path / "same"), str(tmp_path / "blank"), "--prompts", "14"])
    same, blank = (d for _, d in out)
    assert (same.difference, same.changed) == (0.0, 0)
    assert blank.difference == pytest.approx(-1.0) and blank.changed == 14  # the background alone passes nothing
    assert "judge overall 1.0000" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="holds 14 images, not the 7"):
        paired_probe.main([str(tmp_path / "base"), str(tmp_path / "same"), "--prompts", "7"])


fd_spread = _load("probe_fd_spread")


def test_fd_spread_probe_gives_jackknife_errors_of_fds_their_gaps_and_ratios(tmp_path, capsys) -> None:
    from safetensors.torch import save_file

    renders = shapes.render(shapes.eval_scenes(14)) * 2 - 1  # as the bench caches them
    noisy = (renders + 0.3 * torch.randn(renders.shape, generator=torch.Generator().manual_seed(0))).clamp(-1, 1)
    for name, images in (("renders", renders), ("noisy", noisy), ("blank", renders[:, :, :1, :1].expand_as(renders))):
        (tmp_path / name).mkdir()
        save_file({"images": images.contiguous()}, str(tmp_path / name / "chunk-0000.safetensors"))
    args = [str(tmp_path / "noisy"), str(tmp_path / "blank"), "--teacher", str(tmp_path / "renders"), "--prompts", "14"]
    noisy_spread, blank_spread, teacher = fd_spread.main(args)
    assert teacher.fd == pytest.approx(0.0, abs=0.05)  # the renders against themselves (after a float round trip)
    assert min(blank_spread.fd, noisy_spread.fd) > 100 * teacher.fd and noisy_spread.standard_error > 0
    assert blank_spread.difference == pytest.approx(blank_spread.fd - noisy_spread.fd) and blank_spread.difference_se > 0
    assert noisy_spread.ratio is not None and teacher.ratio is None
    out = capsys.readouterr().out
    assert "jackknife's standard error" in out and "minus noisy's" in out
    with pytest.raises(SystemExit, match="needs 2 groups"):
        fd_spread.main([*args, "--groups", "1"])


proxy_probe = _load("probe_judge_proxy")


def test_judge_proxy_agreement_on_renders_and_on_swapped_captions() -> None:
    """Renders for their own captions: the judge accepts all, the proxy nearly all, and its loss on them is small;
    under other captions both refuse nearly all, and the proxy's loss on the images the judge rejects is large."""
    from engines.features import load_feature_network

    proxy = load_feature_network(REPO / "checkpoints" / "shapes-judge-proxy")
    scenes = shapes.eval_scenes(70)
    pixels = shapes.to_uint8(shapes.render(scenes))
    own = proxy_probe.agreement(pixels, [s.condition for s in scenes], proxy)
    assert own["judge"] == 1.0 and own["proxy"] > 0.95 and own["proxy_only"] == 0.0
    assert own["loss_judge_accepts"] < 0.3 and np.isnan(own["loss_judge_rejects"])  # nothing rejected
    swapped = proxy_probe.agreement(pixels, [s.condition for s in scenes[1:] + scenes[:1]], proxy)
    assert swapped["judge"] < 0.1 and swapped["proxy"] < 0.2
    assert swapped["loss_judge_rejects"] > 20 * own["loss_judge_accepts"]


def test_pixel_descent_lowers_the_proxy_loss_and_keeps_the_images_shape() -> None:
    from engines.features import load_feature_network

    proxy = load_feature_network(REPO / "checkpoints" / "shapes-judge-proxy").requires_grad_(False)
    scenes = shapes.eval_scenes(8)
    pixels = shapes.to_uint8(shapes.render(scenes))
    wrong = [s.condition for s in scenes[1:] + scenes[:1]]
    after, losses = proxy_probe.descend(pixels, wrong, proxy, steps=8, lr=0.02)
    assert after.shape == pixels.shape and after.dtype == np.uint8
    assert len(losses) == 8 and losses[-1] < 0.5 * losses[0]
    assert np.abs(after.astype(int) - pixels.astype(int)).mean() > 1  # the pixels moved


def test_judge_proxy_probe_refuses_a_cache_of_another_prompt_count(tmp_path) -> None:
    from safetensors.torch import save_file

    save_file({"images": torch.zeros(4, 3, 64, 64)}, str(tmp_path / "chunk-0000.safetensors"))
    with pytest.raises(SystemExit, match="holds 4 images, not the 560"):
        proxy_probe.main(["agree", str(tmp_path)])
    from bench.image_cache import cached_pixels

    assert cached_pixels(tmp_path, 4).shape == (4, 64, 64, 3)  # the count every probe checks, in one place
    with pytest.raises(SystemExit):
        proxy_probe.main(["descend", str(tmp_path), "--sigma", "1.5"])


fd_count = _load("fd_by_prompt_count")


def _result(path, prompts: int, device: str, rows: list[dict]):
    import json

    path.write_text(
        json.dumps({"suite": "image", "device": device, "prompts": prompts, "fd_real_vs_real": 1000 / prompts, "rows": rows})
    )
    return path


def _fd_row(model: str, steps: int, fd: float, jackknife: list[float] | None = None) -> dict:
    row = {"model": model, "steps": steps, "fd": fd, "quality": {"overall": 0.5}}
    return row | ({"fd_jackknife": jackknife, "fd_se": 0.1} if jackknife else {})


def test_fd_by_prompt_count_recovers_a_known_bias_and_the_unbiased_ratio(tmp_path) -> None:
    """FDs made exactly as 5 + 9000/N (teacher) and 20 + 8000/N (model): the fit gives back 5, 20 and a ratio of 4,
    while the ratios at each count are pulled towards 1 the fewer the prompts."""
    files = []
    for n in (560, 1120, 2240, 4480):
        teacher, model = 5 + 9000 / n, 20 + 8000 / n
        rows = [_fd_row("teacher", 50, teacher, [teacher, teacher * 1.01]), _fd_row("student", 1, model, [model, model * 0.99])]
        files.append(_result(tmp_path / f"r{n}.json", n, "gpu", rows))
    report = fd_count.main([*map(str, files), "--model", "student", "--teacher", "teacher", "--out", str(tmp_path / "out")])
    assert report["teacher_fit"]["fd_inf"] == pytest.approx(5) and report["model_fit"]["k"] == pytest.approx(8000)
    assert report["ratio_inf"] == pytest.approx(4)
    ratios = [entry["ratio"] for entry in report["series"]]
    assert ratios == sorted(ratios) and ratios[0] < 2 and all(entry["ratio_se"] > 0 for entry in report["series"])
    assert "ratio of the FD_infs 4.00" in (tmp_path / "out" / "fd-by-prompt-count.md").read_text()


def test_fd_by_prompt_count_refuses_mixed_devices_missing_rows_and_one_count(tmp_path) -> None:
    rows = [_fd_row("teacher", 50, 10.0), _fd_row("student", 1, 20.0)]
    a, b = _result(tmp_path / "a.json", 560, "gpu", rows), _result(tmp_path / "b.json", 1120, "cpu", rows)
    with pytest.raises(SystemExit, match="different devices"):
        fd_count.main([str(a), str(b), "--model", "student", "--teacher", "teacher"])
    with pytest.raises(SystemExit, match="no row of other at 1 steps"):
        fd_count.main([str(a), "--model", "other", "--teacher", "teacher"])
    with pytest.raises(SystemExit, match="at least two different prompt counts"):
        fd_count.main([str(a), str(a), "--model", "student", "--teacher", "teacher"])


projection_probe = _load("probe_projection")


def test_projection_follow_fine_tunes_and_judges_before_and_after(tiny_image_root) -> None:
    """One projection step on the tiny student: the loss is logged with its share of samples with a target, and the
    paired difference is the after-minus-before of the judge's category mean on the same noise."""
    result = projection_probe.follow(tiny_image_root / "tiny-cpu", steps=2, batch_size=3, lr=1e-4, prompts=7)
    assert [h["step"] for h in result["history"]] == [1, 2]
    assert all(h["loss"] >= 0 and 0 <= h["with_target"] <= 1 for h in result["history"])
    assert 0 <= result["judge_before"] <= 1 and 0 <= result["judge_after"] <= 1
    assert result["paired_difference"] == pytest.approx(result["judge_after"] - result["judge_before"])
    with pytest.raises(SystemExit):
        projection_probe.main(["follow", "--steps", "0"])


def test_projection_ceiling_on_renders_is_the_renders_own_judge() -> None:
    scenes = shapes.eval_scenes(70)
    pixels = shapes.to_uint8(shapes.render(scenes))
    report = projection_probe.projection_report(pixels, [s.condition for s in scenes])
    assert report["judge"] == 1.0 and report["with_target"] == 1.0 and report["judge_if_all_projected"] > 0.95
    assert report["distance_accepted"] < 0.02 and np.isnan(report["rejected_fixed_by_target"])


pair_fit = _load("probe_pair_fit")


def test_pair_fit_probe_draws_the_training_pairs_own_captions_noise_and_endpoints(tiny_image_root) -> None:
    """'Seen' must be exactly what DMD2's regression trained on: the pair set's captions, seeds and teacher images."""
    from engines.text_encoder import TextEncoder
    from trainer import distill
    from trainer.networks import load_network
    from trainer.ode_pairs import PairRecipe, make_pair_set

    root = tiny_image_root / "tiny-cpu"
    teacher = distill.load_teacher(str(root), torch.device("cpu"), "probe")
    encoder = TextEncoder(device="cpu")
    recipe = PairRecipe.for_teacher(teacher, encoder, steps=2, guidance=teacher.card.default_guidance, count=3, seed=0)
    pairs = make_pair_set(recipe, teacher.network, encoder, torch.device("cpu"))
    scenes = pair_fit.pair_scenes(3)
    assert torch.equal(encoder.tokenize([s.caption for s in scenes])["input_ids"], pairs.tokens["input_ids"])
    assert pair_fit.pair_seeds(3) == pairs.seeds.tolist() == [0, 1, 2]
    assert pair_fit.pair_seeds(2, offset=100) == [100, 101]

    student = load_network(root).eval()
    from trainer.methods.dmd2 import regression_loss

    fits = []
    for label, seeds in (("seen", pair_fit.pair_seeds(3)), ("fresh", pair_fit.pair_seeds(3, offset=50))):
        endpoints = pair_fit.teacher_endpoints(teacher, encoder, scenes, seeds, steps=2)
        one_step = pair_fit.one_step_images(student, encoder, scenes, seeds)
        fits.append(pair_fit.score(label, endpoints, one_step, scenes))
        # the per-caption distances average to DMD2's regression loss on the same images
        assert fits[-1].distance == pytest.approx(regression_loss(one_step, endpoints).item(), rel=1e-5)
    seen, fresh = fits
    for f in (seen, fresh):
        assert 0 <= f.both_pass <= min(f.teacher_pass, f.student_pass) <= 1 and f.distance > 0
        assert f.student_verdicts.shape == f.distances.shape == (3,)
    # the student's one-step images are compared with the pair set's own endpoints: fresh noise gives other ones
    with torch.no_grad():
        batch = pairs.batch(torch.arange(3), torch.device("cpu"))
        one_step = distill.predict_x0(student, batch["noise"], torch.ones(3), encoder.encode_tokens(batch["tokens"]))
    expected = 0.5 * (one_step.clamp(-1, 1) - batch["samples"].float()).pow(2).mean().item()
    assert seen.distance == pytest.approx(expected, rel=2e-2)  # the set keeps float16 endpoints
    assert fresh.distance != pytest.approx(seen.distance, rel=1e-3)


def test_pair_fit_probe_regresses_on_its_pairs_and_refuses_bad_input(tiny_image_root, tmp_path, capsys) -> None:
    import json
    import shutil

    root = str(tiny_image_root / "tiny-cpu")
    # the student: the tiny network with a sampler of its own (shift 2.5), which --save must keep
    parent_dir = shutil.copytree(root, tmp_path / "tiny-parent")
    scheduler_file = parent_dir / "scheduler" / "scheduler_config.json"
    scheduler_file.write_text(json.dumps(json.loads(scheduler_file.read_text()) | {"shift": 2.5}))
    out = tmp_path / "fit.json"
    argv = [str(parent_dir), "--teacher", root, "--captions", "3", "--steps", "3", "--pair-count", "6", "--fresh-offset", "6"]
    saved = tmp_path / "tiny-regfit"
    result = pair_fit.main(
        [*argv, "--regress-steps", "20", "--regress-batch", "6", "--regress-lr", "1e-3", "--out", str(out), "--save", str(saved)]
    )
    assert [f.noise for f in result["before"]] == [f.noise for f in result["after"]] == ["seen", "fresh"]
    assert "seen minus fresh noise (paired by caption)" in capsys.readouterr().out
    history = result["regress"]["history"]
    assert [h["step"] for h in history] == list(range(2, 21, 2)) and history[-1]["loss"] < history[0]["loss"]
    seen_before, seen_after = result["before"][0], result["after"][0]
    # the tiny 4-step network draws far outside [-1, 1]: the loss (unclamped, as DMD2's) falls while the distance on
    # the clamped images it shows may not, so the test asks only that the network the fit scores is the trained one
    assert seen_after.distance != pytest.approx(seen_before.distance, rel=1e-3)
    assert seen_after.teacher_pass == seen_before.teacher_pass  # the same teacher endpoints before and after
    written = json.loads(out.read_text())
    assert written["regress"]["pairs"] == 6 and written["after"][0]["distance"] == pytest.approx(seen_after.distance)
    assert "student_verdicts" not in written["before"][0] and "distances" not in written["before"][0]
    # --save exports the fine-tuned network as a student checkpoint: the parent's card with the stage added, and
    # the weights the "after" fit scored (float16 on disk, so close, not equal)
    from engines.card import load_card
    from trainer.networks import load_network

    card, parent = load_card(saved), load_card(parent_dir)
    assert card.id == "tiny-regfit" and card.role == parent.role and card.data["init_from"] == str(parent_dir)
    assert card.data["ode_pairs"]["count"] == 6 and card.data["images_seen"] == 20 * 6
    assert "--regress-steps 20" in card.data["stage"] and str(history[-1]["loss"]) in card.data["stage"]
    assert card.train_gpu_seconds is None and "stages" not in card.data  # a CPU stage, as the trainer reports one
    assert card.metrics == {} and (saved / "README.md").is_file()
    assert json.loads((saved / "scheduler" / "scheduler_config.json").read_text())["shift"] == 2.5  # the parent's sampler
    from engines.text_encoder import TextEncoder
    from trainer import distill

    scenes, seeds, encoder = pair_fit.pair_scenes(3), pair_fit.pair_seeds(3), TextEncoder(device="cpu")
    teacher = distill.load_teacher(root, torch.device("cpu"), "probe")
    endpoints = pair_fit.teacher_endpoints(teacher, encoder, scenes, seeds, steps=3)
    reloaded = pair_fit.one_step_images(load_network(saved).float().eval(), encoder, scenes, seeds)
    assert pair_fit.score("seen", endpoints, reloaded, scenes).distance == pytest.approx(seen_after.distance, rel=2e-2)
    for bad in (
        [root, "--teacher", root, "--captions", "1"],
        [root, "--teacher", root, "--fresh-offset", "4095"],
        [*argv[:4], "9", *argv[5:], "--regress-steps", "1"],  # more captions than the pairs it makes
        [*argv, "--regress-steps", "-1"],
        [*argv, "--judge-workers", "-1"],
        [str(tiny_image_root), "--teacher", root],
    ):
        with pytest.raises(SystemExit):
            pair_fit.main(bad)
    saved_card = (saved / "card.json").read_text()
    for bad, message in (
        ([*argv, "--save", str(tmp_path / "x")], "needs --regress-steps"),
        ([*argv, "--regress-steps", "1", "--save", str(parent_dir)], "exists and is not empty"),  # the student itself
        ([*argv, "--regress-steps", "1", "--save", str(saved)], "exists and is not empty"),  # any checkpoint there
        ([*argv, "--regress-steps", "1", "--save", str(tmp_path / "no spaces")], "the folder's name is the checkpoint's id"),
    ):
        with pytest.raises(SystemExit, match=message):
            pair_fit.main(bad)
    assert (saved / "card.json").read_text() == saved_card and not (tmp_path / "no spaces").exists()
    # on a GPU the stage joins the parent student's stages and its cost adds to theirs (`with_earlier_stages`)
    card_file = parent_dir / "card.json"
    card_file.write_text(json.dumps(json.loads(card_file.read_text()) | {"role": "student", "train_gpu_seconds": 100.0}))
    entry = {"count": 6, "teacher": "tiny-cpu", "steps": 3, "guidance": 1.0, "made_in_s": 2.0}
    gpu = pair_fit.save_fine_tune(
        load_network(saved), parent_dir, tmp_path / "tiny-regfit-gpu", result["regress"], entry, 12.5, torch.device("cpu")
    )
    card = load_card(gpu)
    assert card.train_gpu_seconds == 112.5 and [s["train_gpu_seconds"] for s in card.data["stages"]] == [100.0, 12.5]
    assert card.data["stages"][-1]["ode_pairs"] == entry and card.data["stages"][0]["model"] == parent.id
    with pytest.raises(ValueError, match="run seed other than 0"):
        pair_fit.pair_seeds(3, run_seed=1)
    with pytest.raises(ValueError, match="2 scenes but 1 seeds"):
        pair_fit._chunks(pair_fit.pair_scenes(2), [0], 32, 8, torch.device("cpu"))
