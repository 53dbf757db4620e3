"""Reflow (+ one-step distill stage) and guidance distillation on the tiny CPU teacher: a few steps,
export through the registry, the NFE each sampler costs, straightness, and rejected configs."""

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from engines.card import ModelCard, load_card
from engines.denoisers import embeds_guidance, velocity
from engines.registry import Registry
from engines.requests import ImageRequest
from trainer.config import ConfigError, load_config
from trainer.image_task import new_scheduler
from trainer.loop import train
from trainer.methods.dmd2 import DMD2
from trainer.methods.guidance import GuidanceDistillation
from trainer.methods.reflow import Reflow, measure_straightness, straightness
from trainer.networks import build_network

CPU = torch.device("cpu")


def tiny_config(tmp_path, root, method: str, name: str, *extra: str):
    """tiny-cpu.yaml shortened to 3 steps of batch 2, exporting `name` in float32 to tmp_path/ck/name."""
    return load_config(
        "configs/tiny-cpu.yaml",
        [
            f"--method={method}",
            f"--teacher={root / 'tiny-cpu'}",
            f"--run_dir={tmp_path / name / 'run'}",
            f"--export.output_dir={tmp_path / 'ck' / name}",
            f"--export.id={name}",
            "--export.dtype=float32",
            "--max_steps=3",
            "--batch_size=2",
            "--warmup_steps=1",
            "--log_every=1",
            "--eval_prompts=2",
            "--eval_every=1000",
            "--sample_every=1000",
            "--checkpoint_every=1000",
            *extra,
        ],
    )


def losses(run_dir) -> list[dict]:
    return [r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


def unet_weights(checkpoint) -> dict[str, torch.Tensor]:
    return load_file(str(checkpoint / "unet" / "diffusion_pytorch_model.safetensors"))


def changed(exported, teacher) -> bool:
    a, b = unet_weights(exported), unet_weights(teacher)
    return any(not torch.allclose(a[k].float(), b[k].float(), atol=1e-6) for k in b)


# ----------------------------------------------------------------------------- guidance distillation


def test_guidance_student_trains_and_runs_one_evaluation_per_step(tmp_path, tiny_image_root, text_encoder):
    # export.default_guidance/steps given here are overridden: the student ships the teacher's sampler.
    config = tiny_config(tmp_path, tiny_image_root, "guidance", "guided", "--export.default_guidance=5.0")
    summary = train(config, text_encoder=text_encoder)
    records = losses(tmp_path / "guided" / "run")
    assert len(records) == 3 and all(math.isfinite(r["loss"]) for r in records)
    assert all(1.0 <= r["w_mean"] <= 6.0 for r in records)

    registry = Registry([tmp_path / "ck"], device="cpu")
    card = registry.card("guided")
    teacher = load_card(tiny_image_root / "tiny-cpu")
    assert (card.role, card.method, card.teacher) == ("student", "guidance", "tiny-cpu")
    assert (card.default_guidance, card.default_steps) == (teacher.default_guidance, teacher.default_steps)
    assert config.export.default_guidance == 5.0  # the method overrides the card, never the user's config
    assert summary["model"] == str(card.path)
    engine = registry.engine("guided")
    assert embeds_guidance(engine.denoiser) and not engine.scheduler.config.stochastic_sampling
    result = engine.generate(ImageRequest("a red circle", seed=3, steps=3, guidance=4.0, batch=2))
    assert result.timings.nfe == 3 and len(result.images) == 2  # guidance > 1 at one evaluation per step
    assert changed(card.path, tiny_image_root / "tiny-cpu")
    assert unet_weights(card.path)["time_embedding.cond_proj.weight"].abs().sum() > 0  # the guidance input learned


def test_guidance_student_starts_as_the_teachers_conditional_branch(tmp_path, tiny_image_root, text_encoder):
    method = GuidanceDistillation(tiny_config(tmp_path, tiny_image_root, "guidance", "init"), CPU, text_encoder)
    student, teacher = method.networks["student"], method.teacher.network
    assert student.time_embedding.cond_proj.weight.abs().sum() == 0
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 3, 16, 16, generator=g)
    t = torch.rand(3, generator=g) * 1000
    w = 1 + 5 * torch.rand(3, generator=g)
    emb = text_encoder.encode(["a red circle", "two blue squares", "a small green triangle"])
    with torch.no_grad():
        assert torch.allclose(velocity(student, x, t, emb, guidance=w), velocity(teacher, x, t, emb), atol=1e-5)


def test_guidance_distillation_rejects_a_transformer_teacher_and_bad_scales(tmp_path, tiny_image_root, text_encoder):
    sd3 = tmp_path / "dit-teacher"
    build_network("dit-tiny").save_pretrained(sd3 / "transformer", safe_serialization=True)
    new_scheduler().save_pretrained(sd3 / "scheduler")
    ModelCard(id="dit-teacher", modality="image", role="teacher", method="flow_matching", default_steps=4, resolution=16).save(
        sd3
    )
    config = tiny_config(tmp_path, tiny_image_root, "guidance", "bad", f"--teacher={sd3}")
    with pytest.raises(ConfigError, match="UNet2DConditionModel teacher"):
        GuidanceDistillation(config, CPU, text_encoder)
    config = tiny_config(tmp_path, tiny_image_root, "guidance", "bad", "--method_config.w_min=4", "--method_config.w_max=2")
    with pytest.raises(ConfigError, match="w_min <= w_max"):
        GuidanceDistillation(config, CPU, text_encoder)


# ----------------------------------------------------------------------------- reflow


REFLOW = ["--method_config.pair_steps=3", "--method_config.straightness_every=1", "--method_config.straightness_prompts=2"]


def test_reflow_then_one_step_distill_from_its_export(tmp_path, tiny_image_root, text_encoder):
    train(tiny_config(tmp_path, tiny_image_root, "reflow", "reflowed", *REFLOW), text_encoder=text_encoder)
    records = losses(tmp_path / "reflowed" / "run")
    assert len(records) == 3 and all(math.isfinite(r["loss"]) for r in records)
    assert all(math.isfinite(r["straightness"]) and r["straightness"] >= 0 for r in records)

    registry = Registry([tiny_image_root, tmp_path / "ck"], device="cpu")  # one registry: the text encoder loads once
    card = registry.card("reflowed")
    assert (card.role, card.method, card.teacher, card.default_guidance) == ("student", "reflow", "tiny-cpu", 1.0)
    engine = registry.engine("reflowed")
    assert not engine.scheduler.config.stochastic_sampling
    request = ImageRequest("a red circle", seed=5, steps=2)
    first, again = engine.generate(request), engine.generate(request)
    assert first.timings.nfe == 2  # guidance 1: one evaluation per Euler step
    assert first.images[0].tobytes() == again.images[0].tobytes()  # the ODE sampler is deterministic
    assert changed(card.path, tiny_image_root / "tiny-cpu")
    for model in (registry.engine("tiny-cpu"), engine):  # each at its card's guidance: the field its sampler follows
        s = measure_straightness(model, None, ["a red circle", "two blue squares"], [0, 1], steps=6)
        assert math.isfinite(s) and s >= 0

    # Stage 2 (InstaFlow): the one-step map, from the reflowed student and its own pairs.
    distill_config = tiny_config(
        tmp_path, tiny_image_root, "reflow", "one-step", *REFLOW, "--method_config.stage=distill", f"--init_from={card.path}"
    )
    distill_config.max_steps = 2
    train(distill_config, text_encoder=text_encoder)
    assert all(math.isfinite(r["loss"]) and r["sigma_mean"] == 1.0 for r in losses(tmp_path / "one-step" / "run"))
    registry.refresh()
    card = registry.card("one-step")
    assert (card.role, card.method, card.teacher, card.default_steps) == ("student", "reflow", "tiny-cpu", 1)
    assert card.data["init_from"].endswith("reflowed")
    assert registry.engine("one-step").generate(ImageRequest("a blue square", seed=1)).timings.nfe == 1
    assert changed(card.path, tmp_path / "ck" / "reflowed")

    # Stage 3: DMD2's one-step GAN-headed stage from the one-step map: the generator starts at the map, the critic
    # at the teacher.
    dmd_config = tiny_config(
        tmp_path,
        tiny_image_root,
        "dmd2",
        "dmd-from-map",
        f"--init_from={card.path}",
        "--method_config.student_steps=[1]",
        "--method_config.gan_generator_weight=0.005",
        "--method_config.gan_critic_weight=0.01",
        "--max_steps=2",
    )
    dmd = DMD2(dmd_config, CPU, text_encoder)
    start = dmd.networks["generator"].state_dict()
    assert all(torch.equal(start[k], v) for k, v in registry.engine("one-step").denoiser.state_dict().items())
    del dmd
    train(dmd_config, text_encoder=text_encoder)
    registry.refresh()
    card = registry.card("dmd-from-map")
    assert (card.method, card.teacher) == ("dmd2", "tiny-cpu")
    assert card.data["init_from"].endswith("one-step") and changed(card.path, tmp_path / "ck" / "one-step")


def test_reflow_rejects_an_unknown_stage_and_a_distill_stage_without_init_from(tmp_path, tiny_image_root, text_encoder):
    with pytest.raises(ConfigError, match="stage must be one of reflow, distill"):
        Reflow(tiny_config(tmp_path, tiny_image_root, "reflow", "bad", "--method_config.stage=straighten"), CPU, text_encoder)
    with pytest.raises(ConfigError, match="set init_from"):
        Reflow(tiny_config(tmp_path, tiny_image_root, "reflow", "bad", "--method_config.stage=distill"), CPU, text_encoder)


def test_straightness_is_zero_for_straight_paths_and_positive_for_curved_ones():
    g = torch.Generator().manual_seed(0)
    z, target = torch.randn(4, 3, 8, 8, generator=g), torch.randn(4, 3, 8, 8, generator=g)
    # The rectified field towards fixed images: every path is a straight line at constant speed.
    straight = lambda x, sigma: (x - target) / sigma.view(-1, 1, 1, 1)
    assert float(straightness(straight, z, steps=8)) < 1e-10
    curved = lambda x, sigma: x * torch.cos(6 * sigma.view(-1, 1, 1, 1))
    assert float(straightness(curved, z, steps=8)) > 1e-2


def test_measure_straightness_of_the_teacher(studio_registry, text_encoder):
    engine = studio_registry.engine("tiny-cpu")
    prompts, seeds = ["a red circle", "two blue squares"], [0, 1]
    guided = measure_straightness(engine, None, prompts, seeds, steps=6)  # at the card's guidance (2.0)
    plain = measure_straightness(engine.denoiser, text_encoder, prompts, seeds, steps=6)  # a bare network: guidance 1
    assert all(math.isfinite(s) and s >= 0 for s in (guided, plain))


def test_straightness_probe_script_measures_what_training_logs(tmp_path, tiny_image_root, tiny_text_root, text_encoder, capsys):
    """scripts/probe_straightness.py on a teacher gives the number a reflow run logs before its first update (the
    student starts as the teacher), so a teacher measured later sits on the run's curve; bad input is refused."""
    import importlib.util

    from tests.conftest import REPO

    spec = importlib.util.spec_from_file_location("probe_straightness", REPO / "scripts" / "probe_straightness.py")
    probe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(probe)

    method = Reflow(tiny_config(tmp_path, tiny_image_root, "reflow", "probe", *REFLOW), CPU, text_encoder)
    logged = float(method._straightness(method.networks["student"], step=0))
    teacher = str(tiny_image_root / "tiny-cpu")  # a directory, as users pass their own checkpoints
    found = probe.main([teacher, "--guidance", "1", "2", "--prompts", "2", "--checkpoints", str(tiny_image_root)])
    assert found[("tiny-cpu", 1.0)] == pytest.approx(logged, rel=1e-5)
    assert found[("tiny-cpu", 2.0)] != pytest.approx(logged, rel=1e-3)  # CFG bends the path differently
    with pytest.raises(SystemExit):
        probe.main(["tiny-cpu", "--guidance", "0.5", "--checkpoints", str(tiny_image_root)])
    assert "--guidance must be >= 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        probe.main([str(tiny_text_root / "tiny-text"), "--checkpoints", str(tiny_image_root)])
    assert "is a text checkpoint; straightness is measured on image ODEs" in capsys.readouterr().err
