"""The text refiner in front of a UNet's cross-attention (engines/refined_unet.py)."""

from __future__ import annotations

import pytest
import torch

from engines.checkpoints import load_diffusers_model
from engines.denoisers import denoiser_folder, find_denoiser
from engines.refined_unet import RefinedUNet2DConditionModel, TextRefiner, extend_unet, position_grid
from trainer.config import ConfigError
from trainer.networks import add_unet_conditioning, build_network


def _inputs(batch: int = 2) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    states = torch.randn(batch, 12, 384, generator=gen)
    states[:, 7:] = 0  # padding, as the text encoder leaves it
    return torch.randn(batch, 3, 16, 16, generator=gen), torch.full((batch,), 500.0), states


def _out(model, x, t, states) -> torch.Tensor:
    return model(x, t, encoder_hidden_states=states, class_labels=states.mean(1)).sample


def _trained(refined: RefinedUNet2DConditionModel) -> RefinedUNet2DConditionModel:
    with torch.no_grad():  # move the zero-initialised output projection, as training would
        for p in refined.text_refiner.proj_out.parameters():
            p.normal_(0, 0.5, generator=torch.Generator().manual_seed(1))
    return refined


def test_wrapping_a_trained_unet_changes_nothing_until_the_refiner_trains() -> None:
    unet = build_network("unet-tiny").eval()
    refined = extend_unet(unet, layers=1, dim=16, heads=2).eval()
    x, t, states = _inputs()
    assert torch.equal(_out(refined, x, t, states), _out(unet, x, t, states))
    _trained(refined)
    assert not torch.allclose(_out(refined, x, t, states), _out(unet, x, t, states))


def test_refiner_keeps_padding_zero_and_the_null_prompt_finite() -> None:
    refiner = TextRefiner(384, 16, 1, 2)
    torch.nn.init.normal_(refiner.proj_out.weight)
    _, _, states = _inputs()
    states[1] = 0  # the CFG null prompt: all padding
    out = refiner(states)
    assert torch.isfinite(out).all()
    assert torch.equal(out[:, 7:], torch.zeros_like(out[:, 7:]))
    assert torch.equal(out[1], torch.zeros_like(out[1]))
    assert not torch.allclose(out[0, :7], states[0, :7])
    # more padding does not change what real tokens become: padding is masked out of attention
    padded = torch.cat([states, torch.zeros(2, 5, 384)], dim=1)
    assert torch.allclose(refiner(padded)[:, :12], out, atol=1e-5)


def test_refined_unet_round_trips_through_the_checkpoint_loader(tmp_path) -> None:
    refined = _trained(extend_unet(build_network("unet-tiny"), layers=2, dim=16, heads=2)).eval()
    folder = tmp_path / "model" / denoiser_folder(refined)
    assert folder.name == "unet"  # the SD layout: a subclass keeps its base's folder
    refined.save_pretrained(folder)
    path, _ = find_denoiser(tmp_path / "model")
    loaded = load_diffusers_model(path, "UNet2DConditionModel").eval()
    assert isinstance(loaded, RefinedUNet2DConditionModel)
    assert loaded.config.text_refiner_layers == 2
    x, t, states = _inputs()
    assert torch.equal(_out(loaded, x, t, states), _out(refined, x, t, states))


def test_add_text_refiner_refuses_what_it_cannot_do() -> None:
    with pytest.raises(ConfigError, match="UNet2DConditionModel"):
        add_unet_conditioning(build_network("dit-tiny"), 1, 16, 2)
    with pytest.raises(ConfigError, match="multiple of heads"):
        add_unet_conditioning(build_network("unet-tiny"), 1, 15, 2)
    refined = add_unet_conditioning(build_network("unet-tiny"), 1, 16, 2)
    assert add_unet_conditioning(refined, 1, 16, 2) is refined  # continuing a run keeps its refiner
    with pytest.raises(ConfigError, match="already has a text refiner"):
        add_unet_conditioning(refined, 2, 16, 2)
    with pytest.raises(ConfigError, match="already has a text refiner"):
        add_unet_conditioning(refined, 1, 16, 2, position_frequencies=4)


def test_position_grid_tells_left_from_right_and_top_from_bottom() -> None:
    grid = position_grid(16, 3)
    assert grid.shape == (12, 16, 16)
    # the lowest x frequency (sin(pi/2 x)) rises from left to right and is constant down each column
    assert torch.all(grid[0, :, 1:] > grid[0, :, :-1])
    assert torch.equal(grid[0, 0], grid[0, 7])
    # the lowest y frequency rises from top to bottom and is constant along each row
    assert torch.all(grid[6, 1:, :] > grid[6, :-1, :])
    # every pixel has its own feature vector
    flat = grid.flatten(1).T
    assert torch.cdist(flat, flat).add(torch.eye(256) * 9).min() > 1e-3


def _positioned(positioned: RefinedUNet2DConditionModel) -> RefinedUNet2DConditionModel:
    with torch.no_grad():  # move the zero-initialised projection, as training would
        positioned.conv_in.position.weight.normal_(0, 0.5, generator=torch.Generator().manual_seed(2))
    return positioned


def test_position_features_start_at_zero_then_make_the_unet_position_aware() -> None:
    unet = build_network("unet-tiny").eval()
    positioned = extend_unet(unet, position_frequencies=3).eval()
    assert positioned.text_refiner is None
    x, t, states = _inputs()
    assert torch.equal(_out(positioned, x, t, states), _out(unet, x, t, states))
    _positioned(positioned)  # in place
    assert not torch.allclose(_out(positioned, x, t, states), _out(unet, x, t, states))
    # What conv_in adds is a map of position alone: the same for every input, different at every pixel.
    added = positioned.conv_in(x) - unet.conv_in(x)
    assert torch.allclose(added[0], added[1], atol=1e-6)
    per_pixel = added[0].flatten(1).T
    assert torch.cdist(per_pixel, per_pixel).add(torch.eye(256) * 9).min() > 1e-4
    # the grid is built once at the trained size; another size gets its own grid, not the stored one
    assert torch.equal(positioned.conv_in.grid[0], position_grid(16, 3))
    small = torch.randn(1, 3, 8, 8)
    expected = unet.conv_in(small) + positioned.conv_in.position(position_grid(8, 3)[None])
    assert torch.allclose(positioned.conv_in(small), expected, atol=1e-6)


def test_positioned_unet_round_trips_and_loads_a_plain_unets_weights(tmp_path) -> None:
    unet = build_network("unet-tiny").eval()
    both = extend_unet(unet, layers=1, dim=16, heads=2, position_frequencies=2)
    assert torch.equal(both.conv_in.weight, unet.conv_in.weight)
    _trained(both)
    with torch.no_grad():
        both.conv_in.position.weight.normal_(0, 0.5, generator=torch.Generator().manual_seed(3))
    both.save_pretrained(tmp_path / "unet")
    loaded = load_diffusers_model(tmp_path / "unet", "UNet2DConditionModel").eval()
    assert loaded.config.position_frequencies == 2 and loaded.config.text_refiner_layers == 1
    x, t, states = _inputs()
    assert torch.equal(_out(loaded, x, t, states), _out(both.eval(), x, t, states))


def test_position_features_refuse_bad_settings() -> None:
    with pytest.raises(ValueError, match="nothing to add"):
        extend_unet(build_network("unet-tiny"))
    with pytest.raises(ConfigError, match="more than 16"):
        add_unet_conditioning(build_network("unet-tiny"), position_frequencies=40)
    with pytest.raises(ConfigError, match="layers, dim, heads"):
        add_unet_conditioning(build_network("unet-tiny"), position_frequencies=-1)
    with pytest.raises(ConfigError, match="UNet2DConditionModel"):
        add_unet_conditioning(build_network("dit-tiny"), position_frequencies=4)
    positioned = add_unet_conditioning(build_network("unet-tiny"), position_frequencies=4)
    assert add_unet_conditioning(positioned, position_frequencies=4) is positioned
    with pytest.raises(ConfigError, match="position frequencies"):
        add_unet_conditioning(positioned, position_frequencies=2)
    x, t, states = _inputs()
    with pytest.raises(ValueError, match="square"):
        positioned(x[..., :8], t, encoder_hidden_states=states, class_labels=states.mean(1))


def test_refiner_positions_give_it_word_order() -> None:
    states = torch.randn(1, 6, 384, generator=torch.Generator().manual_seed(4))
    swapped = states[:, [1, 0, 2, 3, 4, 5]]  # the same words, the first two in the other order
    for positions in (0, 8):
        refiner = TextRefiner(384, 16, 1, 2, positions)
        torch.nn.init.normal_(refiner.proj_out.weight, generator=torch.Generator().manual_seed(5))
        out, out_swapped = refiner(states), refiner(swapped)
        # without positions the refiner is permutation-equivariant: swapping the words swaps the outputs
        same = torch.allclose(out[:, [1, 0, 2, 3, 4, 5]], out_swapped, atol=1e-5)
        assert same == (positions == 0)
    with pytest.raises(ValueError, match="positions for 8"):
        refiner(torch.randn(1, 9, 384))


def test_refiner_positions_round_trip_through_extend_unet(tmp_path) -> None:
    unet = build_network("unet-tiny").eval()
    refined = extend_unet(unet, layers=1, dim=16, heads=2, token_positions=12).eval()
    x, t, states = _inputs()
    assert torch.equal(_out(refined, x, t, states), _out(unet, x, t, states))  # identity until trained
    _trained(refined).save_pretrained(tmp_path / "unet")
    loaded = load_diffusers_model(tmp_path / "unet", "UNet2DConditionModel").eval()
    assert loaded.config.text_refiner_positions == 12
    assert torch.equal(_out(loaded, x, t, states), _out(refined, x, t, states))
    with pytest.raises(ConfigError, match="positions"):
        add_unet_conditioning(loaded, 1, 16, 2)  # continuing with another refiner is refused


def test_a_position_gain_change_keeps_the_outputs_and_survives_saving(tmp_path) -> None:
    positioned = _positioned(extend_unet(build_network("unet-tiny"), position_frequencies=3).eval())
    x, t, states = _inputs()
    before = _out(positioned, x, t, states)
    strong = add_unet_conditioning(positioned, position_frequencies=3, position_gain=10.0)
    assert strong is positioned and strong.config.position_gain == 10.0
    assert torch.allclose(strong.conv_in.grid[0], position_grid(16, 3) * 10)
    assert torch.allclose(_out(strong, x, t, states), before, atol=1e-5)  # the projection was rescaled
    strong.save_pretrained(tmp_path / "unet")
    loaded = load_diffusers_model(tmp_path / "unet", "UNet2DConditionModel").eval()
    assert loaded.config.position_gain == 10.0 and torch.allclose(_out(loaded, x, t, states), before, atol=1e-5)
    # a fresh UNet built with a gain scales its features from the start (the projection is still zero)
    fresh = extend_unet(build_network("unet-tiny"), position_frequencies=2, position_gain=4.0)
    assert torch.allclose(fresh.conv_in.grid[0], position_grid(16, 2) * 4)
    with pytest.raises(ConfigError, match="position_gain must be > 0"):
        add_unet_conditioning(build_network("unet-tiny"), position_frequencies=2, position_gain=0)
    with pytest.raises(ValueError, match="position_gain must be > 0"):
        extend_unet(build_network("unet-tiny"), position_frequencies=2, position_gain=-1.0)
