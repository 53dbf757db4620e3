"""What DMD-family students share beyond the loop: reward judging in worker processes (JudgePool gives back the
in-process answer, in order), Re-DMD's weighting, and the noise levels where the two scores are compared."""

import numpy as np
import pytest
import torch

from trainer.config import ConfigError
from trainer.distill import CriticDistillConfig, dmd_noise_level, reward_weighted
from trainer.judge_pool import JudgePool
from trainer.worlds import motion, shapes


def test_judge_pool_in_workers_equals_in_process() -> None:
    clips = motion.eval_clips(6, 8, seed=3)
    video = motion.to_uint8(motion.render_clips(clips, 8))
    video[::2] = video[::2, :1]  # every other clip frozen: rewards differ across the batch
    inline = JudgePool(0)(motion.motion_rewards, video, clips)
    pool = JudgePool(2)
    try:
        spread = pool(motion.motion_rewards, video, clips, ("speed", "direction"))
        again = pool(motion.motion_rewards, video, clips)
    finally:
        pool.close()
    assert inline.shape == (6,) and len(set(inline.tolist())) > 1
    np.testing.assert_array_equal(again, inline)
    np.testing.assert_array_equal(spread, motion.motion_rewards(video, clips, ("speed", "direction")))


def test_image_rewards_in_workers_accept_renders_and_refuse_swapped_captions() -> None:
    scenes = shapes.eval_scenes(8, seed=4)
    images = shapes.to_uint8(shapes.render(scenes))
    conditions = [s.condition for s in scenes]
    wrong = conditions[1:] + conditions[:1]  # each image judged against another scene's caption
    pool = JudgePool(2)
    try:
        right, swapped = pool(shapes.judge_rewards, images, conditions), pool(shapes.judge_rewards, images, wrong)
    finally:
        pool.close()
    assert right.dtype == np.float32 and (right == 1).all()
    np.testing.assert_array_equal(swapped, shapes.judge_rewards(images, wrong))
    assert swapped.mean() < 0.5


def test_judge_pool_workers_run_torch_on_one_thread() -> None:
    """Workers spinning torch's default thread count each would oversubscribe the machine's cores many times over."""
    from trainer.judge_pool import worker_threads

    pool = JudgePool(2)
    try:
        threads = pool(worker_threads, np.zeros((4, 1)), [None] * 4)
    finally:
        pool.close()
    assert threads.tolist() == [1, 1, 1, 1]


def test_judge_pool_refuses_mismatched_batches_and_negative_workers() -> None:
    with pytest.raises(ValueError, match="3 samples but 2 conditions"):
        JudgePool(0)(motion.motion_rewards, np.zeros((3, 8, 64, 64, 3), np.uint8), [None, None])
    with pytest.raises(ValueError, match=">= 0"):
        JudgePool(-1)


def test_reward_weighting_keeps_the_scale_and_favours_rewarded_samples() -> None:
    losses = torch.tensor([1.0, 1.0, 3.0, 3.0])
    assert reward_weighted(losses, torch.tensor([0.0, 1.0, 0.0, 1.0]), 0.0) == pytest.approx(2.0)
    equal = reward_weighted(losses, torch.full((4,), 0.7), 5.0)
    assert equal == pytest.approx(2.0)  # the same reward everywhere is plain DMD
    towards_big = reward_weighted(losses, torch.tensor([0.0, 0.0, 1.0, 1.0]), 1.0)
    w = np.exp(1.0)
    assert towards_big == pytest.approx((2 * 1 + 2 * 3 * w) / (2 + 2 * w))
    with pytest.raises(ValueError, match="one reward per sample"):
        reward_weighted(losses, torch.zeros(3), 1.0)


def test_a_negative_beta_favours_the_rejected_samples_and_only_finite_betas_are_taken() -> None:
    losses = torch.tensor([1.0, 1.0, 3.0, 3.0])  # the first two rejected, the last two accepted
    rewards = torch.tensor([0.0, 0.0, 1.0, 1.0])
    w = np.exp(-1.0)
    towards_rejected = reward_weighted(losses, rewards, -1.0)
    assert towards_rejected == pytest.approx((2 * 1 + 2 * 3 * w) / (2 + 2 * w))
    assert towards_rejected < reward_weighted(losses, rewards, 0.0) < reward_weighted(losses, rewards, 1.0)
    assert reward_weighted(losses, torch.full((4,), 0.3), -4.0) == pytest.approx(2.0)  # equal rewards: plain DMD
    assert CriticDistillConfig(reward_beta=-1.0).rewarded and CriticDistillConfig(reward_beta=2.0).rewarded
    assert not CriticDistillConfig().rewarded
    for bad in (float("nan"), float("inf"), float("-inf")):
        with pytest.raises(ConfigError, match="reward_beta must be a finite number"):
            CriticDistillConfig(reward_beta=bad)


def test_dmd_noise_levels_are_uniform_by_default_and_shift_towards_noise() -> None:
    def draw(**kw) -> torch.Tensor:
        return dmd_noise_level(CriticDistillConfig(**kw), 4096, torch.Generator().manual_seed(0), torch.device("cpu"))

    plain = draw()
    assert 0.02 <= plain.min() and plain.max() <= 0.98 and abs(plain.median().item() - 0.5) < 0.03
    u = 0.02 + 0.96 * torch.rand(4096, generator=torch.Generator().manual_seed(0))
    assert torch.equal(plain, u)  # shift 1: exactly the uniform draw (resumed runs of older configs repeat)
    shifted = draw(sigma_shift=3.0)
    assert torch.allclose(shifted, 3 * u / (1 + 2 * u)) and shifted.median() > 0.7 and shifted.max() <= 0.9934
    with pytest.raises(ConfigError, match="sigma_shift must be > 0"):
        CriticDistillConfig(sigma_shift=0.0)
