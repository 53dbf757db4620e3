"""Self-Forcing's ODE initialisation stage on the tiny CPU video teacher: teacher clips as pairs, the
teacher-forced chunk regression, its export, and the DMD stage started from it."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from engines.card import load_card
from engines.registry import Registry
from engines.requests import VideoRequest
from engines.text_encoder import TextEncoder
from tests.conftest import REPO, one_thread
from trainer.config import ConfigError, load_config
from trainer.loop import train
from trainer.methods.self_forcing import SelfForcing
from trainer.ode_pairs import load_pair_set

CPU = torch.device("cpu")
CONFIG = str(REPO / "configs" / "tiny-self-forcing-cpu.yaml")


@pytest.fixture(autouse=True)
def _one_thread():
    with one_thread():
        yield


@pytest.fixture(scope="module")
def text_encoder():
    return TextEncoder(device="cpu", max_tokens=56)


def ode_config(tiny_video_root, tmp_path, name: str, *extra: str):
    return load_config(
        CONFIG,
        [
            f"--teacher={tiny_video_root / 'tiny-video'}",
            f"--run_dir={tmp_path / name}",
            f"--export.output_dir={tmp_path / 'ck' / name}",
            f"--export.id={name}",
            "--export.dtype=float32",
            "--method_config.stage=ode_init",
            "--method_config.ode_pairs=5",
            "--method_config.ode_pair_steps=3",
            "--max_steps=3",
            *extra,
        ],
    )


def test_ode_init_regresses_teacher_clips_then_the_dmd_stage_starts_from_it(tiny_video_root, text_encoder, tmp_path):
    train(ode_config(tiny_video_root, tmp_path, "ode"), text_encoder=text_encoder)
    records = [json.loads(line) for line in (tmp_path / "ode" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss/ode"] for r in records if "loss/ode" in r]
    assert len(losses) == 3 and all(math.isfinite(v) and v > 0 for v in losses)
    assert not any("loss/critic" in r for r in records)  # no critic in this stage
    pairs = load_pair_set(tmp_path / "ode" / "ode-pairs.safetensors")
    assert pairs.samples.shape == (5, 4, 3, 16, 16) and pairs.actions.shape == (5, 4)
    assert (pairs.recipe.teacher, pairs.recipe.frames, pairs.recipe.steps) == ("tiny-video", 4, 3)
    card = load_card(tmp_path / "ck" / "ode")
    assert (card.role, card.method, card.data["stage"], card.teacher) == ("student", "self_forcing", "ode_init", "tiny-video")
    assert card.data["ode_pairs"]["frames"] == 4 and card.data["ode_pairs"]["count"] == 5

    dmd = load_config(
        CONFIG,
        [
            f"--teacher={tiny_video_root / 'tiny-video'}",
            f"--init_from={tmp_path / 'ck' / 'ode'}",
            f"--run_dir={tmp_path / 'dmd'}",
            f"--export.output_dir={tmp_path / 'ck' / 'dmd'}",
            "--export.id=dmd",
        ],
    )
    train(dmd, text_encoder=text_encoder)
    card = load_card(tmp_path / "ck" / "dmd")
    assert (card.data["stage"], card.data["init_from"]) == ("dmd", str(tmp_path / "ck" / "ode"))
    frames = Registry([tmp_path / "ck"], device="cpu").engine("dmd").generate(VideoRequest("a red ball", seed=1, frames=4))
    assert len(frames.frames) == 4 and np.asarray(frames.frames[0]).shape == (16, 16, 3)


def test_pair_clips_are_the_teachers_own_clips(tiny_video_root, text_encoder, tmp_path):
    method = SelfForcing(
        ode_config(tiny_video_root, tmp_path, "pairs", "--method_config.interactive_fraction=0"), CPU, text_encoder
    )
    pairs = method.pairs
    assert int(pairs.actions.abs().sum()) == 0  # no interactive clips asked for
    captions = text_encoder.tokenizer.batch_decode(pairs.tokens["input_ids"], skip_special_tokens=True)
    engine = Registry([tiny_video_root], device="cpu").engine("tiny-video")
    assert engine.card.default_guidance == method.guidance  # the pairs use the real score's CFG: the card's here
    made = engine.generate(VideoRequest(captions[0], seed=int(pairs.seeds[0]), steps=3, frames=4))
    ours = ((pairs.samples[0].float() + 1) / 2 * 255).round().clamp(0, 255).permute(0, 2, 3, 1).numpy()
    assert np.abs(np.stack([np.asarray(f) for f in made.frames]).astype(np.float32) - ours).max() <= 2.0


def test_the_ode_loss_pulls_the_student_to_the_teachers_clips(tiny_video_root, text_encoder, tmp_path):
    method = SelfForcing(ode_config(tiny_video_root, tmp_path, "pull"), CPU, text_encoder)
    generator = method.networks["generator"]
    assert set(method.networks) == {"generator"} and method.phases(0) == ["generator"]
    optimizer = torch.optim.Adam(generator.parameters(), lr=3e-3)
    values = []
    for _ in range(30):  # the same clips, steps and noise each time: only the student changes
        loss = method.ode_loss(generator, 5, torch.Generator().manual_seed(0))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        values.append(loss.item())
    assert values[-1] < 0.7 * values[0], values


def test_dmd_stage_with_regression_adds_the_ode_loss_on_the_same_pairs(tiny_video_root, text_encoder, tmp_path):
    """DMD's regression loss in the Self-Forcing DMD stage: the pair set is made once (as the ODE stage makes it), each
    student step logs DMD and regression, the loss is their weighted sum, and the card records the pairs."""
    config = ode_config(tiny_video_root, tmp_path, "reg", "--method_config.stage=dmd", "--method_config.regression_weight=0.5")
    method = SelfForcing(config, CPU, text_encoder)
    assert set(method.networks) == {"generator", "critic"} and method.pairs is not None
    batch = method.data_source()(0, 0, 0)
    loss, metrics = method.loss("generator", method.networks, batch, torch.Generator().manual_seed(2))
    assert {"loss/dmd", "loss/regression"} <= set(metrics)
    assert torch.allclose(loss.detach(), metrics["loss/dmd"] + 0.5 * metrics["loss/regression"])
    plain = SelfForcing(ode_config(tiny_video_root, tmp_path, "plain", "--method_config.stage=dmd"), CPU, text_encoder)
    assert plain.pairs is None  # no regression: no pair set to make
    assert "loss/regression" not in plain.loss("generator", plain.networks, batch, torch.Generator().manual_seed(2))[1]

    train(config, text_encoder=text_encoder)
    records = [json.loads(line) for line in (tmp_path / "reg" / "metrics.jsonl").read_text().splitlines()]
    assert any("loss/regression" in r for r in records) and any("loss/critic" in r for r in records)
    assert load_card(tmp_path / "ck" / "reg").data["ode_pairs"]["count"] == 5


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("--method_config.regression_weight=-1", "regression_weight must be >= 0"),
        ("--method_config.stage=warmup", "stage must be one of dmd, ode_init"),
        ("--method_config.ode_pairs=0", "ode_pairs >= 1"),
        ("--method_config.ode_pair_steps=0", "ode_pair_steps >= 1"),
    ],
)
def test_bad_ode_init_settings_are_refused(extra, message, tiny_video_root, text_encoder, tmp_path):
    with pytest.raises(ConfigError, match=message):
        SelfForcing(ode_config(tiny_video_root, tmp_path, "bad", extra), CPU, text_encoder)


def test_ode_init_lr_probe_reads_the_fixed_batch_loss_as_the_student_trains(tiny_video_root, tmp_path):
    """scripts/probe_ode_init_lr.py: every lr starts from the same weights (same first reading), and the one
    that trains moves the loss while lr 0 leaves it exactly where it was; --bf16 reads the same loss."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("probe_ode_init_lr", REPO / "scripts" / "probe_ode_init_lr.py")
    probe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(probe)
    args = ["--config", CONFIG, "--teacher", str(tiny_video_root / "tiny-video"), "--run-dir", str(tmp_path / "p")]
    args += ["--set", "method_config.stage=ode_init"]  # the tiny config is a DMD-stage one
    small = ["--steps", "4", "--batch", "2", "--pairs", "4", "--pair-steps", "2"]
    trained, frozen = (r["fixed_batch_loss"] for r in probe.main([*args, "--lrs", "1e-2,0", *small]))
    assert len(trained) == len(frozen) == 5 and trained[0] == frozen[0] > 0
    assert frozen == [frozen[0]] * 5 and trained[-1] != trained[0]
    (half,) = probe.main([*args, "--lrs", "0", *small, "--bf16", "--held-out", "2"])  # pairs reused from the run dir
    assert abs(half["fixed_batch_loss"][0] - frozen[0]) < 0.2 * frozen[0]  # the same loss, in bfloat16
    # pairs it never trained on read another loss, unchanged at lr 0; each step count has its own loss
    assert len(half["held_out_loss"]) == 5 and half["held_out_loss"][0] != half["fixed_batch_loss"][0]
    assert half["held_out_loss"] == [half["held_out_loss"][0]] * 5
    start, end = half["by_steps"]["start"], half["by_steps"]["end"]
    assert start == end and len(set(start.values())) == len(start) > 1
    for bad in (["--steps", "2"], ["--held-out", "-1"]):
        with pytest.raises(SystemExit):
            probe.main([*args, *bad])


def test_regression_weight_probe_reads_the_video_students_two_pulls(tiny_video_root, tmp_path):
    """scripts/probe_regression_weight.py on Self-Forcing: DMD's and the regression's gradient norms from the same
    draws; a method without a regression term is refused before anything is built."""
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location("probe_regression_weight", REPO / "scripts" / "probe_regression_weight.py")
    probe = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = probe  # its dataclass looks the module up while it loads
    spec.loader.exec_module(probe)
    teacher = str(tiny_video_root / "tiny-video")
    args = ["--config", CONFIG, "--teacher", teacher, "--init-from", teacher, "--run-dir", str(tmp_path / "probe")]
    args += ["--pairs", "3", "--batch", "2", "--draws", "2", "--set", "method_config.ode_pair_steps=2"]
    first, second = probe.main(args)
    for pull in (first, second):
        assert pull.dmd_norm > 0 and pull.regression_norm > 0 and -1 <= pull.cosine <= 1
    assert first != second  # two draws
    assert probe.main(args)[0] == first  # the same draw: the same numbers (pairs reused from the run dir)
    with pytest.raises(SystemExit):
        probe.main(["--config", str(REPO / "configs" / "tiny-video-cpu.yaml"), "--run-dir", str(tmp_path / "no")])
    with pytest.raises(SystemExit):
        probe.main([*args, "--pairs", "0"])
