"""Distillation runs on CPU: exact resume of a multi-phase method, the NaN stop, the collapse
guard, and clear errors for bad teachers and methods."""

import json
import math
import shutil

import pytest
import torch

from trainer import checkpoint as ckpt
from trainer.config import ConfigError, load_config
from trainer.guard import TrainingCollapsed
from trainer.loop import StopFlag, TrainingDiverged, train


def losses(run_dir) -> dict[int, dict]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {
        r["step"]: {k: v for k, v in r.items() if k.startswith("loss")} for r in records if any(k.startswith("loss") for k in r)
    }


def test_dmd2_killed_and_resumed_logs_the_same_losses(dmd2_args, text_encoder, tmp_path):
    train(load_config("configs/tiny-cpu.yaml", dmd2_args("straight")), text_encoder=text_encoder)
    stop = StopFlag()
    train(
        load_config("configs/tiny-cpu.yaml", dmd2_args("broken")),
        stop=stop,
        on_step=lambda step: stop.set() if step == 3 else None,
        text_encoder=text_encoder,
    )
    train(load_config("configs/tiny-cpu.yaml", dmd2_args("broken")), text_encoder=text_encoder)
    a, b = losses(tmp_path / "straight"), losses(tmp_path / "broken")
    assert sorted(a) == sorted(b) == [1, 2, 3, 4, 5]
    assert {"loss/dmd", "loss/critic"} <= set(a[1])  # step index 0: generator and critic phases
    for step in (4, 5):  # the steps after the kill
        assert a[step] == b[step]


def test_a_nan_loss_stops_with_the_step_and_the_last_good_checkpoint(dmd2_args, text_encoder, monkeypatch):
    from trainer.methods import dmd2

    original = dmd2.DMD2.loss
    calls = {"n": 0}

    def poisoned(self, phase, networks, batch, rng):
        loss, metrics = original(self, phase, networks, batch, rng)
        calls["n"] += 1
        return (loss * float("nan") if calls["n"] > 4 else loss), metrics  # steps 1-2 make 3 calls; step 3's 2nd call

    monkeypatch.setattr(dmd2.DMD2, "loss", poisoned)
    args = dmd2_args("nan", "--checkpoint_every=2")
    with pytest.raises(TrainingDiverged, match=r"'critic' loss or its gradients became NaN/inf at step 3.*step-00000002") as err:
        train(load_config("configs/tiny-cpu.yaml", args), text_encoder=text_encoder)
    assert "weights were not updated" in str(err.value)
    run_dir = load_config("configs/tiny-cpu.yaml", args).run_dir
    last = ckpt.latest_checkpoint(run_dir)
    assert last.name == "step-00000002"
    state = ckpt.load_state(last)
    assert state["step"] == 2


def test_collapse_guard_stops_and_keeps_the_last_healthy_checkpoint(dmd2_args, text_encoder, monkeypatch):
    from trainer.methods.base import ImageMethod

    readings = iter([0.30, 0.29, 0.01])  # healthy, healthy, collapsed
    monkeypatch.setattr(ImageMethod, "diversity", lambda *a, **k: next(readings))
    args = dmd2_args("collapse", "--eval_every=1", "--eval_prompts=7", "--keep_checkpoints=1")
    with pytest.raises(TrainingCollapsed, match=r"collapsed at step 3: sample diversity fell to 0.0100 from 0.3000") as err:
        train(load_config("configs/tiny-cpu.yaml", args), text_encoder=text_encoder)
    message = str(err.value)
    assert "last good checkpoint is" in message and "step-00000002" in message
    run_dir = load_config("configs/tiny-cpu.yaml", args).run_dir
    assert (ckpt.latest_checkpoint(run_dir)).name == "step-00000002"  # protected from pruning, nothing newer


def test_bad_teachers_and_methods_are_refused_clearly(dmd2_args, text_encoder, tiny_image_root, tmp_path):
    def run(name: str, *extra: str) -> None:
        train(load_config("configs/tiny-cpu.yaml", [*dmd2_args(name), *extra]), text_encoder=text_encoder)

    with pytest.raises(ConfigError, match="unknown method 'dmd3'"):
        run("a", "--method=dmd3")
    with pytest.raises(ConfigError, match="does not exist"):
        run("b", f"--teacher={tmp_path / 'nope'}")
    with pytest.raises(ConfigError, match="set `teacher`"):
        run("c", "--teacher=null")
    video = tmp_path / "video-teacher"
    shutil.copytree(tiny_image_root / "tiny-cpu", video)
    card = json.loads((video / "card.json").read_text())
    (video / "card.json").write_text(json.dumps(card | {"modality": "video", "id": "vid"}))
    with pytest.raises(ConfigError, match="'vid' is a video model; 'dmd2' needs an image teacher"):
        run("d", f"--teacher={video}")
    with pytest.raises(ConfigError, match="student_steps"):
        run("e", "--method_config.student_steps=[0]")
    with pytest.raises(ConfigError, match="unknown config key"):
        run("f", "--method_config.ttur=3")


def test_dmd2_reward_weighting_and_gan_head_train_and_log(dmd2_args, text_encoder, tmp_path):
    args = dmd2_args(
        "extras",
        "--method_config.reward_beta=2.0",
        "--method_config.reward_workers=2",  # judged in spawned processes, as on the GPU
        "--method_config.gan_generator_weight=0.01",
        "--method_config.gan_critic_weight=0.01",
        "--method_config.gan_taps=[mid_block,up_blocks.1]",  # the bottleneck and the full-resolution up block
        "--method_config.gan_sigma_max=0.5",
        "--max_steps=3",
    )
    train(load_config("configs/tiny-cpu.yaml", args), text_encoder=text_encoder)
    logged = losses(tmp_path / "extras")
    assert {"loss/dmd", "loss/gan_generator", "loss/critic", "loss/gan_critic"} <= set(logged[1])
    assert all(torch.isfinite(torch.tensor(v)) for step in logged.values() for v in step.values())
    record = json.loads((tmp_path / "extras" / "metrics.jsonl").read_text().splitlines()[0])
    assert 0.0 <= record["reward"] <= 1.0
    critic = ckpt.latest_checkpoint(tmp_path / "extras") / "critic" / "model.safetensors"
    assert critic.is_file()  # the critic with its GAN heads is checkpointed (safetensors) for exact resume
    from safetensors import safe_open

    with safe_open(critic, "pt") as saved:
        heads = {k.split(".net.")[0] for k in saved.keys() if ".net." in k and "head" in k}
    assert heads == {"head", "extra_heads.0"}


def test_gradient_checkpointing_trains_the_same_losses(dmd2_args, text_encoder, tmp_path, monkeypatch):
    """Activation checkpointing only trades memory for recomputation: the GAN-headed DMD2 run logs the same losses
    with it on, in the generator and in the critic that wraps its denoiser."""
    from trainer import loop, networks

    turned_on = {}

    def spy(network, role):
        turned_on[role] = networks.enable_gradient_checkpointing(network, role)
        return turned_on[role]

    monkeypatch.setattr(loop, "enable_gradient_checkpointing", spy)
    gan = ["--method_config.gan_generator_weight=0.01", "--method_config.gan_critic_weight=0.01", "--max_steps=3"]
    train(load_config("configs/tiny-cpu.yaml", dmd2_args("plain", *gan)), text_encoder=text_encoder)
    assert turned_on == {}
    checkpointing = dmd2_args("ckpt", *gan, "--gradient_checkpointing=true")
    train(load_config("configs/tiny-cpu.yaml", checkpointing), text_encoder=text_encoder)
    assert turned_on == {"generator": 1, "critic": 1}
    plain, checkpointed = losses(tmp_path / "plain"), losses(tmp_path / "ckpt")
    assert sorted(plain) == sorted(checkpointed) == [1, 2, 3]
    for step in plain:
        assert checkpointed[step] == pytest.approx(plain[step], rel=1e-5, abs=1e-7)


def test_gradient_checkpointing_turns_on_in_wrapped_models_and_refuses_plain_modules():
    from trainer.methods.dmd2 import Critic
    from trainer.networks import build_network, enable_gradient_checkpointing

    critic = Critic(build_network("unet-tiny"), gan=True)
    assert enable_gradient_checkpointing(critic, "critic") == 1
    assert critic.denoiser.is_gradient_checkpointing
    with pytest.raises(ConfigError, match=r"the student network \(Linear\) holds no diffusers or transformers model"):
        enable_gradient_checkpointing(torch.nn.Linear(2, 2), "student")


def test_a_run_whose_init_from_folder_vanishes_still_exports_and_names_it(dmd2_args, text_encoder, tmp_path):
    """Session 25: a device call's tree sync removed the checkpoint a run had started from while it trained; the
    export read that checkpoint's card only then, and failed after all its steps. The run keeps a copy now."""
    first = train(load_config("configs/tiny-cpu.yaml", dmd2_args("first")), text_encoder=text_encoder)
    parent = shutil.copytree(first["model"], tmp_path / "parent")
    vanish = lambda step: shutil.rmtree(parent) if step == 1 else None  # noqa: E731
    config = load_config(
        "configs/tiny-cpu.yaml",
        [*dmd2_args("second"), f"--init_from={parent}", "--max_steps=2", "--export.id=second-student"],
    )
    summary = train(config, text_encoder=text_encoder, on_step=vanish)
    assert not parent.exists()
    card = json.loads((tmp_path / "second" / "model" / "card.json").read_text())
    assert card["id"] == "second-student" and card["data"]["init_from"] == str(parent)
    assert summary["model"] == str(tmp_path / "second" / "model")
    kept = json.loads((tmp_path / "second" / "init-from-card" / "card.json").read_text())
    assert kept["id"] == json.loads((tmp_path / "first" / "model" / "card.json").read_text())["id"]


def test_dmd2_with_a_negative_beta_judges_its_samples_and_weights_the_rejected_up(dmd2_args, text_encoder, monkeypatch):
    """reward_beta < 0 (session 25): the same judged rollouts, with the rejected ones leading the DMD loss; before,
    only beta > 0 judged anything, so a negative beta would have trained plain DMD without a word."""
    from trainer.methods.dmd2 import DMD2

    def generator_loss(beta: float, rewards: list[float] | None) -> tuple[float, dict]:
        config = load_config("configs/tiny-cpu.yaml", dmd2_args(f"beta{beta}", f"--method_config.reward_beta={beta}"))
        torch.manual_seed(0)
        method = DMD2(config, torch.device("cpu"), text_encoder)
        if rewards is not None:
            monkeypatch.setattr(method, "_rewards", lambda x0, conditions: torch.tensor(rewards[: len(conditions)]))
        batch = method.data_source()(0, 0, 0)
        _, metrics = method.loss("generator", method.networks, batch, torch.Generator().manual_seed(5))
        return metrics["loss/dmd"].item(), metrics

    plain, plain_metrics = generator_loss(0.0, None)
    assert "reward" not in plain_metrics
    verdicts = [1.0, 0.0, 1.0, 0.0]
    down, metrics = generator_loss(-2.0, verdicts)
    up, _ = generator_loss(2.0, verdicts)
    assert metrics["reward"].item() == pytest.approx(0.5)  # judged, and logged
    assert down != pytest.approx(plain) and up != pytest.approx(plain) and down != pytest.approx(up)
    assert generator_loss(-2.0, [1.0, 1.0, 1.0, 1.0])[0] == pytest.approx(plain)  # one verdict for all: plain DMD


def test_patch_gan_trains_the_same_networks_with_losses_of_its_own(dmd2_args, text_encoder, tmp_path):
    """gan_patch (session 25) changes how the heads' logits meet the loss, not what is trained: the same checkpoint
    keys and shapes as the image-level GAN, finite GAN losses, and other losses than the image-level run's."""
    gan = [
        "--method_config.gan_generator_weight=0.05",
        "--method_config.gan_critic_weight=0.05",
        "--method_config.gan_taps=[mid_block,up_blocks.1]",
        "--max_steps=2",
        "--checkpoint_every=2",
    ]
    train(load_config("configs/tiny-cpu.yaml", dmd2_args("image", *gan)), text_encoder=text_encoder)
    patch_args = dmd2_args("patch", *gan, "--method_config.gan_patch=true")
    train(load_config("configs/tiny-cpu.yaml", patch_args), text_encoder=text_encoder)
    image, patch = losses(tmp_path / "image"), losses(tmp_path / "patch")
    assert sorted(image) == sorted(patch) == [1, 2]
    assert {"loss/gan_generator", "loss/gan_critic"} <= set(patch[1]) | set(patch[2])
    assert all(math.isfinite(v) for step in patch.values() for v in step.values())
    assert any(patch[s].get(k) != pytest.approx(image[s].get(k)) for s in patch for k in patch[s] if "gan" in k)
    from safetensors import safe_open

    def shapes_of(run: str) -> dict:
        critic = ckpt.latest_checkpoint(tmp_path / run) / "critic" / "model.safetensors"
        with safe_open(critic, "pt") as saved:
            return {k: tuple(saved.get_slice(k).get_shape()) for k in saved.keys()}

    assert shapes_of("patch") == shapes_of("image")


def test_dmd2_projection_loss_trains_logs_and_refuses_a_bad_weight(dmd2_args, text_encoder, tmp_path):
    """projection_weight adds the pull towards each sample's corrected scene: its first DMD loss is plain DMD's (the
    projection draws no random numbers), its loss and the share of samples with a target are logged, and the
    weights it trains differ from plain DMD's."""
    plain = dmd2_args("plain", "--max_steps=3")
    projected = dmd2_args(
        "projected", "--max_steps=3", "--method_config.projection_weight=4.0", "--method_config.reward_workers=2"
    )
    train(load_config("configs/tiny-cpu.yaml", plain), text_encoder=text_encoder)
    train(load_config("configs/tiny-cpu.yaml", projected), text_encoder=text_encoder)
    a, b = losses(tmp_path / "plain"), losses(tmp_path / "projected")
    assert "loss/projection" in b[1] and "loss/projection" not in a[1]
    assert b[1]["loss/dmd"] == pytest.approx(a[1]["loss/dmd"])
    assert all(
        math.isfinite(step["loss/projection"]) and step["loss/projection"] >= 0
        for step in b.values()
        if "loss/projection" in step
    )
    assert any(step.get("loss/projection", 0) > 0 for step in b.values())  # some samples had a target
    record = json.loads((tmp_path / "projected" / "metrics.jsonl").read_text().splitlines()[0])
    assert 0.0 <= record["projection_valid"] <= 1.0
    assert b[3]["loss/dmd"] != pytest.approx(a[3]["loss/dmd"])
    with pytest.raises(ConfigError, match="projection_weight must be a finite number >= 0"):
        train(
            load_config("configs/tiny-cpu.yaml", dmd2_args("bad", "--method_config.projection_weight=-1")),
            text_encoder=text_encoder,
        )
