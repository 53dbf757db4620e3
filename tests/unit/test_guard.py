"""Collapse guard logic and the diversity measure it watches."""

import pytest
import torch

from trainer.guard import CollapseGuard, diversity


def test_healthy_runs_pass_and_a_diversity_cliff_stops():
    guard = CollapseGuard(diversity_ratio=0.35, judge_drop=0.25)
    assert guard.check(100, judge=0.40, diversity=0.20) is None
    assert guard.check(200, judge=0.50, diversity=0.12) is None  # some loss of diversity is normal
    verdict = guard.check(300, judge=0.48, diversity=0.05)
    assert verdict and "step 300" in verdict and "diversity fell to 0.0500 from 0.2000" in verdict


def test_a_judge_cliff_stops_and_names_the_best_step():
    guard = CollapseGuard(judge_drop=0.25)
    guard.check(100, 0.30, 0.2)
    guard.check(200, 0.60, 0.2)
    assert guard.check(300, 0.45, 0.2) is None  # a dip smaller than judge_drop
    verdict = guard.check(400, 0.20, 0.2)
    assert verdict and "0.200 from 0.600 at step 200" in verdict


def test_diversity_is_zero_for_repeated_images_and_large_for_noise():
    same = torch.rand(1, 3, 8, 8).repeat(8, 1, 1, 1)
    assert diversity(same, per_prompt=4) == pytest.approx(0.0, abs=1e-7)
    assert diversity(torch.randn(8, 3, 8, 8), per_prompt=4) > 0.8
    with pytest.raises(ValueError, match="groups of 3"):
        diversity(torch.randn(8, 3, 8, 8), per_prompt=3)
