"""The shipped FD feature network and the Fréchet distance: loading, accuracy, what FD values mean,
bad inputs, and the benchmark's FD plumbing."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from engines.errors import CheckpointError
from engines.features import (
    CARD_FILE,
    ShapesFeatureNet,
    as_model_input,
    fid_features,
    frechet_distance,
    load_feature_network,
    resize_for_features,
)
from trainer.worlds import shapes

SHIPPED = Path(__file__).resolve().parents[2] / "checkpoints" / "shapes-features"
N_FD = 500  # images per set: enough for stable 128-d covariances, cheap to render (~1.5 s)


@pytest.fixture(scope="module")
def net() -> ShapesFeatureNet:
    return load_feature_network(SHIPPED)


@pytest.fixture(scope="module")
def card() -> dict:
    return json.loads((SHIPPED / CARD_FILE).read_text())


def real_renders(n: int, seed: int) -> np.ndarray:
    return shapes.to_uint8(shapes.render(shapes.eval_scenes(n, seed=seed)))


@pytest.fixture(scope="module")
def feats(net) -> dict[str, np.ndarray]:
    """Features of two disjoint sets of real renders, uniform noise, and colour-swapped renders."""
    a, b = real_renders(N_FD, seed=11), real_renders(N_FD, seed=12)
    noise = torch.rand(N_FD, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    return {
        "real_a": fid_features(net, a),
        "real_b": fid_features(net, b),
        "noise": fid_features(net, noise),
        "bgr": fid_features(net, np.ascontiguousarray(b[..., ::-1])),  # same scenes, red and blue swapped
    }


# ----------------------------------------------------------------------------- the shipped network


def test_shipped_network_is_safetensors_only_and_small():
    files = sorted(p.name for p in SHIPPED.iterdir())
    assert "model.safetensors" in files and "config.json" in files and CARD_FILE in files and "README.md" in files
    assert not [f for f in files if f.endswith((".bin", ".pt", ".pth", ".ckpt", ".pkl"))], files
    assert "card.json" not in files  # the registry would try to serve it as an image engine
    assert sum(p.stat().st_size for p in SHIPPED.iterdir()) < 5 * 2**20


def test_shipped_network_loads_with_the_worlds_labels(net, card):
    assert isinstance(net, ShapesFeatureNet) and not net.training
    assert net.config.color_names == list(shapes.COLOR_NAMES)
    assert net.config.shape_names == list(shapes.SHAPE_NAMES)
    assert net.config.size_names == list(shapes.SIZE_NAMES)
    assert sum(p.numel() for p in net.parameters()) == card["architecture"]["parameters"]


def test_heldout_accuracy_matches_the_card(net, card):
    from trainer.train_features import evaluate_heads

    recorded = card["heldout_first_200"]
    measured = evaluate_heads(net, shapes.eval_scenes(recorded["scenes"], recorded["seed"]))
    print("held-out accuracy on 200 scenes:", json.dumps(measured))
    for head, value in recorded["accuracy"].items():
        # The same 200 images: at most one prediction may flip (float summation order differs by batch/threads).
        assert abs(measured[head] - value) <= 1 / recorded["scenes"] + 1e-9, head
        # Against the card's 2000-scene figure: within 3 binomial standard errors of 200 draws.
        p = card["heldout"]["accuracy"][head]
        assert abs(measured[head] - p) <= max(3 * (p * (1 - p) / recorded["scenes"]) ** 0.5, 0.01), head
    assert card["heldout"]["accuracy"]["count"] > 0.95 and card["heldout"]["accuracy"]["pairs_exact"] > 0.9


# ----------------------------------------------------------------------------- what FD values mean


def test_fd_of_real_renders_is_near_zero_and_noise_is_far(feats):
    real = frechet_distance(feats["real_a"], feats["real_b"])
    noise = frechet_distance(feats["real_a"], feats["noise"])
    print(f"FD real vs real ({N_FD} vs {N_FD} scenes, seeds 11/12): {real:.4f}; real vs uniform noise: {noise:.2f}")
    assert noise > 0 and real < 0.05 * noise  # "near zero": under 5 % of the distance to pure noise


def test_fd_sees_a_wrong_colour_distribution(feats):
    real = frechet_distance(feats["real_a"], feats["real_b"])
    swapped = frechet_distance(feats["real_a"], feats["bgr"])
    print(f"FD real vs colour-swapped renders: {swapped:.3f} (real vs real {real:.4f})")
    assert swapped > 5 * real


def test_fd_is_symmetric_and_zero_on_itself(feats):
    a, b = feats["real_a"], feats["noise"]
    ab, ba = frechet_distance(a, b), frechet_distance(b, a)
    assert ab == pytest.approx(ba, rel=1e-6)
    assert frechet_distance(a, a) < 1e-6 * ab


def test_fd_matches_the_closed_form():
    # b = 2a + 3: mu_b = 2 mu_a + 3, S_b = 4 S_a and (S_a S_b)^1/2 = 2 S_a, so FD = ||mu_a + 3||^2 + tr(S_a).
    a = np.random.default_rng(0).normal(size=(400, 16)) @ np.random.default_rng(1).normal(size=(16, 16))
    expected = np.sum((a.mean(axis=0) + 3) ** 2) + np.trace(np.cov(a, rowvar=False))
    assert frechet_distance(a, 2 * a + 3) == pytest.approx(expected, rel=1e-6)


def test_fd_with_singular_covariances_is_finite():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(10, 64)), rng.normal(size=(12, 64))  # fewer samples than dimensions
    fd = frechet_distance(a, b)
    assert np.isfinite(fd) and fd > 0


def test_fd_rejects_bad_features():
    with pytest.raises(ValueError, match="feature dimensions differ"):
        frechet_distance(np.zeros((5, 3)), np.zeros((5, 4)))
    with pytest.raises(ValueError, match="N >= 2"):
        frechet_distance(np.zeros((1, 3)), np.zeros((5, 3)))
    with pytest.raises(ValueError, match="NaN"):
        frechet_distance(np.full((5, 3), np.nan), np.zeros((5, 3)))


# ----------------------------------------------------------------------------- bad inputs


def test_missing_directory_says_how_to_train_one(tmp_path):
    with pytest.raises(CheckpointError, match="trainer.train_features"):
        load_feature_network(tmp_path / "absent")


def test_directory_without_safetensors_is_refused(tmp_path):
    shutil.copy(SHIPPED / "config.json", tmp_path / "config.json")
    with pytest.raises(CheckpointError, match="no .safetensors weights"):
        load_feature_network(tmp_path)
    (tmp_path / "pytorch_model.bin").write_bytes(b"never unpickled")
    with pytest.raises(CheckpointError, match="pickle files are never loaded"):
        load_feature_network(tmp_path)


def test_truncated_weights_are_refused(tmp_path):
    shutil.copy(SHIPPED / "config.json", tmp_path / "config.json")
    data = (SHIPPED / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="may be truncated"):
        load_feature_network(tmp_path)


def test_foreign_config_is_refused(tmp_path):
    shutil.copytree(SHIPPED, tmp_path / "ck")
    (tmp_path / "ck" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(CheckpointError, match="not a feature network"):
        load_feature_network(tmp_path / "ck")


@pytest.mark.parametrize(
    "images",
    [
        torch.zeros(2, 3, 32, 32),  # right layout, wrong size
        torch.zeros(2, 64, 64, 3),  # channels last as a tensor
        np.zeros((2, 3, 64, 64), dtype=np.uint8),  # channels first as an array
        np.zeros((2, 64, 64, 3), dtype=np.float32),  # float array
        torch.zeros(2, 3, 64, 64, dtype=torch.uint8),  # uint8 tensor
    ],
    ids=["32px", "tensor-hwc", "array-chw", "float-array", "uint8-tensor"],
)
def test_wrong_image_layouts_name_the_expected_shape(net, images):
    with pytest.raises(ValueError, match=r"\(B, 3, 64, 64\)"):
        fid_features(net, images)


def test_forward_checks_the_shape(net):
    with pytest.raises(ValueError, match=r"\(B, 3, 64, 64\).*got \(1, 3, 48, 48\)"):
        net(torch.zeros(1, 3, 48, 48))


def test_uint8_arrays_and_float_tensors_give_the_same_features(net):
    images = real_renders(4, seed=5)
    as_tensor = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
    assert np.allclose(fid_features(net, images), fid_features(net, as_tensor), atol=1e-5)
    assert torch.equal(as_model_input(images), as_tensor)


def test_features_do_not_depend_on_the_batch_or_training_mode(net):
    images = real_renders(6, seed=6)
    whole = fid_features(net, images)
    net.train()
    try:
        split = np.concatenate([fid_features(net, images[:2], batch_size=1), fid_features(net, images[2:])])
        assert net.training  # restored
    finally:
        net.eval()
    assert np.allclose(whole, split, atol=1e-5)


def test_resize_replicates_small_images_and_averages_large_ones():
    small = torch.rand(2, 3, 16, 16)
    up = resize_for_features(small)
    assert up.shape == (2, 3, 64, 64) and torch.equal(up[:, :, ::4, ::4], small)
    big = torch.rand(2, 3, 128, 128)
    assert torch.allclose(resize_for_features(big), torch.nn.functional.avg_pool2d(big, 2))


# ----------------------------------------------------------------------------- the benchmark's plumbing


def test_bench_fails_clearly_without_the_feature_network(tmp_path):
    from bench.image import load_fd_network

    with pytest.raises(CheckpointError, match=r"cannot load it.*--features"):
        load_fd_network(tmp_path / "absent", torch.device("cpu"))


def test_bench_fd_floor_and_table(net):
    from bench.common import markdown_table
    from bench.image import fd_images, resolution_floor

    renders = shapes.render(shapes.eval_scenes(70))
    reference = fid_features(net, fd_images(renders))
    assert resolution_floor(net, renders, reference, 64) == 0.0
    floor_32, floor_16 = (resolution_floor(net, renders, reference, r) for r in (32, 16))
    print(f"FD floor of renders at 32 px: {floor_32:.3f}, at 16 px: {floor_16:.3f}")
    assert 0 < floor_32 < floor_16  # less resolution, further from the world
    row = {
        "model": "m",
        "role": "student",
        "backend": "torch",
        "steps": 1,
        "nfe": 1,
        "quality": {"overall": 0.5},
        "fd": 1.234,
        "latency_ms_p50": 1.0,
        "latency_ms_p90": 2.0,
        "throughput_per_s": 3.0,
    }
    table = markdown_table({"suite": "image", "device": "cpu", "created": "now", "git": "x", "rows": [row], "summary": {}})
    assert "| FD |" in table and "| 1.23 |" in table


def test_fd_split_tells_what_is_drawn_from_how_it_is_drawn(net):
    """The world's renders: both parts near 0. Every object yellow: a content gap, drawn cleanly. The
    renders blurred: drawn badly, the same content."""
    from dataclasses import replace

    from bench.image import fd_images, fd_split

    scenes = shapes.eval_scenes(280)
    renders = shapes.render(scenes)
    reference = fid_features(net, fd_images(renders))

    def split(images: torch.Tensor) -> dict:
        pixels = fd_images(images)
        return fd_split(net, fid_features(net, pixels), shapes.detect_all(pixels), reference)

    same = split(renders)
    yellow = split(shapes.render([replace(s, objects=tuple(replace(o, color="yellow") for o in s.objects)) for s in scenes]))
    blurred = split(torch.nn.functional.avg_pool2d(renders, 3, stride=1, padding=1, count_include_pad=False))
    print(f"fd split: renders {same}, yellow {yellow}, blurred {blurred}")
    assert same["fd_content"] < 2 and same["fd_drawing"] < 2
    assert yellow["fd_content"] > 20 * max(1.0, yellow["fd_drawing"])
    assert blurred["fd_drawing"] > 5 * max(1.0, blurred["fd_content"])


# ----------------------------------------------------------------------------- the training script


def test_training_smoke_run_writes_a_loadable_checkpoint_and_repeats(tmp_path):
    from safetensors.torch import load_file

    from trainer.train_features import FeatureTrainConfig, parse, train

    def run(out):
        cfg = FeatureTrainConfig(out=out, steps=3, batch_size=16, chunk=32, passes=2, eval_scenes=200, fd_scenes=20, log_every=1)
        return train(cfg)

    card = run(tmp_path / "a")
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["README.md", "config.json", CARD_FILE, "model.safetensors"]
    assert card["training"]["steps"] == 3 and card["data"]["renders"] == 32  # 32 renders seen twice hold 4 batches of 16
    assert set(card["heldout"]["accuracy"]) >= {"pairs_exact", "count", "sizes_exact"}
    assert json.loads((tmp_path / "a" / CARD_FILE).read_text())["heldout"] == card["heldout"]
    assert isinstance(load_feature_network(tmp_path / "a"), ShapesFeatureNet)
    run(tmp_path / "b")  # seeded end to end: the same weights again
    a, b = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert parse(card["command"].split()[3:]) == FeatureTrainConfig(
        out=tmp_path / "a", steps=3, batch_size=16, chunk=32, passes=2, eval_scenes=200
    )


def test_a_judge_proxy_run_says_so_in_its_card_and_repeats_from_its_command(tmp_path):
    from trainer.train_features import FeatureTrainConfig, noised, parse, train

    cfg = FeatureTrainConfig(
        out=tmp_path / "proxy",
        id="shapes-judge-proxy",
        role="judge-proxy",
        noise_std=0.3,
        seed=1,
        steps=2,
        batch_size=8,
        chunk=16,
        passes=1,
        eval_scenes=200,
        fd_scenes=20,
        log_every=1,
    )
    card = train(cfg)
    assert card["role"] == "judge-proxy" and "Not for Fréchet distances" in card["description"]
    assert "Gaussian pixel noise" in card["data"]["augmentation"]
    assert "Judge proxy" in (tmp_path / "proxy" / "README.md").read_text()
    again = parse(card["command"].split()[3:])
    assert (again.role, again.noise_std, again.id, again.seed) == ("judge-proxy", 0.3, "shapes-judge-proxy", 1)
    assert parse(["--role", "judge-proxy"]).id == "shapes-judge-proxy" and parse([]).id == "shapes-features"
    with pytest.raises(SystemExit):
        parse(["--noise-std", "-0.1"])
    with pytest.raises(SystemExit):
        parse(["--role", "classifier"])
    # the augmentation: about half the images get noise, the rest are untouched, none beyond its std
    x = torch.zeros(400, 3, 8, 8)
    y = noised(x, 0.3, torch.Generator().manual_seed(0))
    touched = (y != 0).flatten(1).any(dim=1).float().mean()
    assert 0.35 < touched < 0.65 and y.std(dim=(1, 2, 3)).max() < 0.3 * 1.2
