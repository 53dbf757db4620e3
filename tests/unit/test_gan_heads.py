"""DMD2's GAN heads: one real/fake logit per tapped critic block, the bottleneck by default, and the GAN's own
noise levels; bad taps and ranges are refused by name."""

import pytest
import torch
import torch.nn.functional as F

from trainer.config import ConfigError
from trainer.methods.dmd2 import Critic, DMD2Config, gan_loss
from trainer.networks import build_network


def _inputs(b: int = 3, size: int = 16):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(b, 3, size, size, generator=g)
    states, pooled = torch.randn(b, 5, 384, generator=g), torch.randn(b, 384, generator=g)
    return x, torch.full((b,), 0.5), states, pooled, torch.ones(b, 5, dtype=torch.bool)


def test_default_head_reads_the_bottleneck_and_keeps_its_checkpoint_key() -> None:
    critic = Critic(build_network("unet-tiny"), gan=True)
    v, logits = critic(*_inputs(), classify=True)
    assert v.shape == (3, 3, 16, 16) and [tuple(head.shape) for head in logits] == [(3,)]
    keys = critic.state_dict().keys()
    assert any(k.startswith("head.net") for k in keys) and not any(k.startswith("extra_heads") for k in keys)
    assert critic(*_inputs())[1] is None  # no classification asked: velocity only


def test_tapped_blocks_each_get_a_head_at_their_width_and_resolution() -> None:
    critic = Critic(build_network("unet-tiny"), gan=True, taps=["mid_block", "up_blocks.0", "up_blocks.1"])
    # unet-tiny: (8, 16) channels; the bottleneck and the first up block are 16 wide, the last up block 8
    widths = [critic.head.out.in_features] + [h.out.in_features for h in critic.extra_heads]
    assert widths == [16, 16, 8]
    _, logits = critic(*_inputs(), classify=True)
    assert [tuple(head.shape) for head in logits] == [(3,)] * 3 and all(torch.isfinite(head).all() for head in logits)
    assert [tuple(f.shape[-2:]) for f in critic._features] == [(8, 8), (16, 16), (16, 16)]
    # each head is trained through its own logits: a loss on the last head reaches only its weights
    logits[2].sum().backward()
    assert critic.extra_heads[1].out.weight.grad.abs().sum() > 0
    for other in (critic.head, critic.extra_heads[0]):
        assert other.out.weight.grad is None or not other.out.weight.grad.any()


def test_a_transformer_critic_taps_its_middle_block_by_default() -> None:
    critic = Critic(build_network("dit-tiny"), gan=True)
    _, logits = critic(*_inputs(2), classify=True)
    assert [tuple(head.shape) for head in logits] == [(2,)] and torch.isfinite(logits[0]).all()


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


def test_patch_heads_give_a_logit_per_location_whose_mean_is_the_image_logit() -> None:
    taps = ["mid_block", "up_blocks.1"]
    image = Critic(build_network("unet-tiny"), gan=True, taps=taps)
    patch = Critic(build_network("unet-tiny"), gan=True, taps=taps, patch=True)
    patch.load_state_dict(image.state_dict())  # the same weights: patch or not is only how the logits are read
    _, whole = image(*_inputs(), classify=True)
    _, local = patch(*_inputs(), classify=True)
    # the heads halve their maps (stride 2): the 8x8 bottleneck gives 4x4 patches, the 16x16 up block 8x8
    assert [tuple(head.shape) for head in local] == [(3, 16), (3, 64)]
    for w, p in zip(whole, local):
        assert torch.allclose(p.mean(dim=1), w, atol=1e-5)
    # the loss is taken per patch: one locally fake patch keeps its own gradient
    logits = [torch.zeros(2, 4, requires_grad=True)]
    with torch.no_grad():
        logits[0][0, 0] = -6.0  # image 0 looks fake in one patch, real (0) elsewhere
    gan_loss(logits, real=True).backward()
    grad = logits[0].grad  # d softplus(-l) / dl = -sigmoid(-l), over 8 patch logits
    assert grad[0, 0] == pytest.approx(-torch.sigmoid(torch.tensor(6.0)).item() / 8)  # the fake patch: pulled hardest
    assert torch.allclose(grad.flatten()[1:], torch.full((7,), -0.5 / 8))
    # an image logit (the patches' mean, -1.5) would have pulled all four patches of image 0 alike
    whole = logits[0].detach().clone().requires_grad_(True)
    gan_loss([whole.mean(dim=1)], real=True).backward()
    assert torch.allclose(whole.grad[0], whole.grad[0, 0].expand(4))
    assert gan_loss([torch.zeros(2, 4)], real=True) == pytest.approx(F.softplus(torch.tensor(0.0)).item())
    # real and fake are mirror images, and heads average
    two = [torch.full((2,), 1.0), torch.full((2, 4), -1.0)]
    assert gan_loss(two, real=True) == pytest.approx(gan_loss([-t for t in two], real=False))
    assert gan_loss(two, real=False) == pytest.approx((F.softplus(torch.tensor(1.0)) + F.softplus(torch.tensor(-1.0))).item() / 2)


def test_patch_gan_without_a_gan_is_refused() -> None:
    with pytest.raises(ConfigError, match="gan_patch needs the GAN on"):
        DMD2Config(gan_patch=True)
    assert DMD2Config(gan_patch=True, gan_generator_weight=0.03, gan_critic_weight=0.05).gan_patch
