"""Analytic checks of the shared sampler and the flow-matching loss."""

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from engines.samplers import flow_match_sample
from engines.text_encoder import TextEmbedding
from trainer.config import TrainConfig
from trainer.loop import lr_at
from trainer.methods.flow_matching import drop_condition, flow_matching_loss


def emb(b: int) -> TextEmbedding:
    return TextEmbedding(torch.zeros(b, 3, 4), torch.zeros(b, 4), torch.ones(b, 3, dtype=torch.bool))


@pytest.mark.parametrize("steps", [1, 2, 7])
def test_exact_velocity_of_a_point_mass_lands_on_it_at_any_step_count(steps):
    target = torch.randn(2, 3, 8, 8)
    # For data = target, the straight-path velocity is v(x, sigma) = (x - target) / sigma.
    velocity = lambda x, t, e: (x - target) / (t.view(-1, 1, 1, 1) / 1000)
    states = list(flow_match_sample(velocity, FlowMatchEulerDiscreteScheduler(), torch.randn(2, 3, 8, 8), steps, emb(2), emb(2)))
    assert [s.step for s in states] == list(range(1, steps + 1))
    assert states[-1].nfe == steps
    torch.testing.assert_close(states[-1].x, target, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(states[0].x0, target, atol=1e-4, rtol=1e-4)


def test_guidance_mixes_conditional_and_null_and_counts_two_nfe():
    calls = []

    def velocity(x, t, e):
        calls.append(x.shape[0])
        return torch.where(e.pooled[:, :1, None, None] > 0, torch.ones_like(x), torch.zeros_like(x))

    cond = TextEmbedding(torch.ones(1, 3, 4), torch.ones(1, 4), torch.ones(1, 3, dtype=torch.bool))
    null = TextEmbedding(torch.zeros(1, 3, 4), torch.zeros(1, 4), torch.zeros(1, 3, dtype=torch.bool))
    x = torch.zeros(1, 1, 2, 2)
    last = list(flow_match_sample(velocity, FlowMatchEulerDiscreteScheduler(), x, 1, cond, null, guidance=3.0))[-1]
    assert calls == [2] and last.nfe == 2  # one batched call for both halves
    torch.testing.assert_close(last.x, torch.full_like(x, -3.0))  # x - 1.0 * (0 + 3 * (1 - 0))


def test_text_embeddings_stack_along_the_batch_in_order():
    a = TextEmbedding(torch.ones(2, 3, 4), torch.ones(2, 4), torch.ones(2, 3, dtype=torch.bool))
    both = TextEmbedding.cat(a, emb(1))
    assert both.states.shape == (3, 3, 4) and both.pooled.shape == (3, 4) and both.mask.shape == (3, 3)
    assert both.states[:2].eq(1).all() and both.states[2].eq(0).all() and both.pooled[2].eq(0).all()
    assert both.mask.all()  # emb() is all-real tokens too
    with pytest.raises(RuntimeError):  # another token length cannot be stacked
        TextEmbedding.cat(a, TextEmbedding(torch.ones(1, 5, 4), torch.ones(1, 4), torch.ones(1, 5, dtype=torch.bool)))


def test_flow_matching_loss_is_zero_for_the_exact_velocity_and_positive_otherwise():
    x0, noise = torch.randn(4, 3, 8, 8), torch.randn(4, 3, 8, 8)
    assert flow_matching_loss(noise - x0, x0, noise).item() == 0.0
    assert flow_matching_loss(noise, x0, noise).item() > 0.0


def test_condition_dropout_zeroes_only_dropped_rows():
    e = TextEmbedding(torch.ones(3, 2, 4), torch.ones(3, 4), torch.ones(3, 2, dtype=torch.bool))
    out = drop_condition(e, torch.tensor([True, False, True]))
    assert out.states[1].abs().sum() == 0 and out.pooled[1].abs().sum() == 0 and not out.mask[1].any()
    assert out.states[0].sum() == 8 and out.mask[2].all()


def test_lr_schedule_warms_up_then_decays_to_the_floor():
    c = TrainConfig(lr=1.0, warmup_steps=10, max_steps=110, min_lr_ratio=0.1)
    assert lr_at(c, 0) == pytest.approx(0.1) and lr_at(c, 9) == pytest.approx(1.0)
    assert lr_at(c, 60) == pytest.approx(0.55) and lr_at(c, 110) == pytest.approx(0.1)
    # a time budget further along than the steps takes over the decay; one behind them changes nothing
    assert lr_at(c, 10, time_progress=0.5) == pytest.approx(0.55) and lr_at(c, 10, time_progress=1.0) == pytest.approx(0.1)
    assert lr_at(c, 60, time_progress=0.2) == pytest.approx(0.55) and lr_at(c, 5, time_progress=0.9) == lr_at(c, 5)


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_flow_matching_trains_at_the_shifted_sigmas(monkeypatch, shift):
    """The teacher samples with the SD3 shift, so it must train at the same shifted sigmas."""
    import trainer.methods.flow_matching as fm

    seen = []

    def velocity(model, x, t, e):
        seen.append(t / 1000)
        return torch.zeros_like(x)

    monkeypatch.setattr(fm, "denoiser_velocity", velocity)
    encoder = type("Encoder", (), {"encode_tokens": lambda self, tokens: emb(512)})()
    config = TrainConfig(model_preset="unet-tiny", method_config={"shift": shift, "cfg_dropout": 0.0})
    method = fm.FlowMatching(config, torch.device("cpu"), encoder)
    monkeypatch.setattr(fm, "render_batch", lambda batch, resolution, device: torch.zeros(512, 3, 4, 4))
    generator = torch.Generator().manual_seed(0)
    method.loss("model", method.networks, {"tokens": None}, generator)
    u = torch.sigmoid(torch.randn(512, generator=torch.Generator().manual_seed(0)))  # the unshifted draw, for scale
    expected_mean = fm.shift_sigma(u, shift).mean().item()
    assert seen[0].mean().item() == pytest.approx(expected_mean, abs=0.05)
    assert (seen[0].mean().item() > 0.65) == (shift == 3.0)  # logit-normal(0, 1) has mean 0.5; shift 3 moves it to ~0.69


def test_category_weights_oversample_and_bad_weights_are_rejected():
    import collections

    from trainer.config import ConfigError
    from trainer.image_task import world_batch_cpu

    weights = {"position": 5.0, "colors": 1.0}
    batch = world_batch_cpu(0, 0, 0, seed=0, batch_size=300, category_weights=weights)
    counts = collections.Counter(c.category for c in batch["conditions"])
    assert set(counts) == {"position", "colors"} and counts["position"] > 3 * counts["colors"]
    with pytest.raises(ConfigError, match="unknown categories"):
        TrainConfig(category_weights={"posiiton": 1.0})
    with pytest.raises(ConfigError, match="positive sum"):
        TrainConfig(category_weights={"position": 0.0})
    with pytest.raises(ConfigError, match="must be numbers"):
        TrainConfig(category_weights={"position": "lots"})
