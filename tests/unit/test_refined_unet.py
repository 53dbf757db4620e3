"""The text refiner in front of a UNet's cross-attention (engines/refined_unet.py)."""

from __future__ import annotations

import pytest
import torch

from engines.checkpoints import load_diffusers_model
from engines.denoisers import denoiser_folder, find_denoiser
from engines.refined_unet import RefinedUNet2DConditionModel, TextRefiner, with_text_refiner
from trainer.config import ConfigError
from trainer.networks import add_text_refiner, build_network


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
    refined = with_text_refiner(unet, layers=1, dim=16, heads=2).eval()
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
    refined = _trained(with_text_refiner(build_network("unet-tiny"), layers=2, dim=16, heads=2)).eval()
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
        add_text_refiner(build_network("dit-tiny"), 1, 16, 2)
    with pytest.raises(ConfigError, match="multiple of heads"):
        add_text_refiner(build_network("unet-tiny"), 1, 15, 2)
    refined = add_text_refiner(build_network("unet-tiny"), 1, 16, 2)
    assert add_text_refiner(refined, 1, 16, 2) is refined  # continuing a run keeps its refiner
    with pytest.raises(ConfigError, match="already has a text refiner"):
        add_text_refiner(refined, 2, 16, 2)
