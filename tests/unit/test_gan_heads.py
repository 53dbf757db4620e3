"""DMD2's GAN heads: one real/fake logit per tapped critic block, the bottleneck by default, and the GAN's own
noise levels; bad taps and ranges are refused by name."""

import pytest
import torch

from trainer.config import ConfigError
from trainer.methods.dmd2 import Critic, DMD2Config
from trainer.networks import build_network


def _inputs(b: int = 3, size: int = 16):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(b, 3, size, size, generator=g)
    states, pooled = torch.randn(b, 5, 384, generator=g), torch.randn(b, 384, generator=g)
    return x, torch.full((b,), 0.5), states, pooled, torch.ones(b, 5, dtype=torch.bool)


def test_default_head_reads_the_bottleneck_and_keeps_its_checkpoint_key() -> None:
    critic = Critic(build_network("unet-tiny"), gan=True)
    v, logits = critic(*_inputs(), classify=True)
    assert v.shape == (3, 3, 16, 16) and logits.shape == (1, 3)
    keys = critic.state_dict().keys()
    assert any(k.startswith("head.net") for k in keys) and not any(k.startswith("extra_heads") for k in keys)
    assert critic(*_inputs())[1] is None  # no classification asked: velocity only


def test_tapped_blocks_each_get_a_head_at_their_width_and_resolution() -> None:
    critic = Critic(build_network("unet-tiny"), gan=True, taps=["mid_block", "up_blocks.0", "up_blocks.1"])
    # unet-tiny: (8, 16) channels; the bottleneck and the first up block are 16 wide, the last up block 8
    widths = [critic.head.out.in_features] + [h.out.in_features for h in critic.extra_heads]
    assert widths == [16, 16, 8]
    _, logits = critic(*_inputs(), classify=True)
    assert logits.shape == (3, 3) and torch.isfinite(logits).all()
    assert [tuple(f.shape[-2:]) for f in critic._features] == [(8, 8), (16, 16), (16, 16)]
    # each head is trained through its own logits: a loss on the last head reaches only its weights
    logits[2].sum().backward()
    assert critic.extra_heads[1].out.weight.grad.abs().sum() > 0
    for other in (critic.head, critic.extra_heads[0]):
        assert other.out.weight.grad is None or not other.out.weight.grad.any()


def test_a_transformer_critic_taps_its_middle_block_by_default() -> None:
    critic = Critic(build_network("dit-tiny"), gan=True)
    _, logits = critic(*_inputs(2), classify=True)
    assert logits.shape == (1, 2) and torch.isfinite(logits).all()


def test_bad_taps_and_gan_noise_ranges_are_refused_by_name() -> None:
    with pytest.raises(ConfigError, match="no block 'up_blocks.9'"):
        Critic(build_network("unet-tiny"), gan=True, taps=["up_blocks.9"])
    with pytest.raises(ConfigError, match="gan_taps must be a list of module paths"):
        DMD2Config(gan_taps=[""])
    with pytest.raises(ConfigError, match=r"gan_sigma_max must be in \(sigma_min=0.02, 1\], got 0.01"):
        DMD2Config(gan_sigma_max=0.01)
    with pytest.raises(ConfigError, match="got 1.5"):
        DMD2Config(gan_sigma_max=1.5)
    assert DMD2Config(gan_sigma_max=0.5, gan_taps=["mid_block"]).gan_sigma_max == 0.5
