"""Flow matching with cross-attention grounding (trainer/attention_maps.py) on CPU."""

import json

import pytest

from trainer.config import ConfigError, load_config
from trainer.image_task import world_batch_cpu
from trainer.loop import train

GROUNDED = ["--method_config.attention_token_weight=0.05", "--method_config.attention_pixel_weight=0.025"]


def test_world_batches_carry_token_masks_that_decode_to_the_objects_words(text_encoder) -> None:

    batch = world_batch_cpu(0, 0, 0, seed=0, batch_size=24, tokenizer=text_encoder.tokenizer)
    assert batch["phrase_tokens"].shape == (24, 2, text_encoder.max_tokens)
    assert "offset_mapping" not in batch["tokens"]  # the encoder is called with these keys
    ids = batch["tokens"]["input_ids"]
    for i, caption in enumerate(batch["captions"]):
        for s in range(2):
            picked = ids[i][batch["phrase_tokens"][i, s]]
            if len(picked):
                text = text_encoder.tokenizer.decode(picked).replace(" - ", "-")
                assert text in caption.lower(), (caption, text)


def test_a_grounded_run_logs_its_attention_losses_and_they_fall(tmp_path, text_encoder, tiny_args) -> None:
    run = tmp_path / "grounded"
    args = [
        *tiny_args,
        f"--run_dir={run}",
        "--model_preset=unet-tiny",
        "--max_steps=6",
        "--log_every=1",
        "--lr=0.01",
        "--warmup_steps=0",
        *GROUNDED,
    ]
    summary = train(load_config(None, args), text_encoder=text_encoder)
    assert summary["finished"]
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [r for r in logged if "attention_token_loss" in r]
    assert len(losses) == 6
    for r in losses:
        assert 0 <= r["attention_token_loss"] <= 1 and r["attention_pixel_loss"] > 0
        assert r["loss"] == pytest.approx(
            r["flow_loss"] + 0.05 * r["attention_token_loss"] + 0.025 * r["attention_pixel_loss"], rel=1e-4
        )
    assert losses[-1]["attention_token_loss"] < losses[0]["attention_token_loss"]


def test_grounding_is_refused_for_bad_weights_and_for_networks_without_cross_attention(tmp_path, text_encoder, tiny_args) -> None:
    for key in (
        "attention_token_weight",
        "attention_sigma_power",
        "attention_order_weight",
        "attention_order_margin",
        "attention_order_sigma_power",
    ):
        bad = [*tiny_args, f"--run_dir={tmp_path / 'bad'}", *GROUNDED, f"--method_config.{key}=-1"]
        with pytest.raises(ConfigError, match="must be >= 0"):
            train(load_config(None, bad), text_encoder=text_encoder)
    dit = [*tiny_args, f"--run_dir={tmp_path / 'dit'}", "--model_preset=dit-tiny", *GROUNDED]
    with pytest.raises(ConfigError, match="needs a network with cross-attention"):
        train(load_config(None, dit), text_encoder=text_encoder)
    assert not (tmp_path / "bad" / "metrics.jsonl").exists()


def test_sigma_power_reweights_the_grounding_losses_and_nothing_else(tmp_path, text_encoder, tiny_args) -> None:
    """Same data and noise: the flow loss is unchanged, the attention losses are averaged differently."""
    logged = {}
    for power in (0, 4):
        run = tmp_path / f"power{power}"
        args = [*tiny_args, f"--run_dir={run}", "--model_preset=unet-tiny", "--max_steps=1", "--log_every=1", *GROUNDED]
        train(load_config(None, [*args, f"--method_config.attention_sigma_power={power}"]), text_encoder=text_encoder)
        logged[power] = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    assert logged[4]["flow_loss"] == pytest.approx(logged[0]["flow_loss"], rel=1e-6)
    assert logged[4]["attention_pixel_loss"] != pytest.approx(logged[0]["attention_pixel_loss"], rel=1e-4)


def test_the_order_loss_alone_trains_on_position_scenes_and_adds_to_the_flow_loss(tmp_path, text_encoder, tiny_args) -> None:
    run = tmp_path / "order"
    args = [*tiny_args, f"--run_dir={run}", "--model_preset=unet-tiny", "--max_steps=2", "--log_every=1"]
    order = ["--method_config.attention_order_weight=0.5", "--method_config.attention_order_margin=0.2"]
    config = load_config(None, [*args, *order])
    config.category_weights = {"position": 1.0}  # every scene relates two objects
    assert train(config, text_encoder=text_encoder)["finished"]
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    assert len(logged) == 2
    for r in logged:
        assert "attention_token_loss" not in r  # the mask losses are off
        assert 0 < r["attention_order_loss"] <= 1.2  # an untrained network's attention is not ordered yet
        assert r["loss"] == pytest.approx(r["flow_loss"] + 0.5 * r["attention_order_loss"], rel=1e-4)


def test_relation_logit_mean_trains_position_scenes_at_higher_noise_and_leaves_others_alone(tmp_path, text_encoder, tiny_args):
    """Same seed, same data: with every scene a position scene the noise levels move up; with none, nothing changes."""

    def sigma_mean(category: str, *extra: str) -> float:
        run = tmp_path / f"{category}{len(extra)}"
        args = [*tiny_args, f"--run_dir={run}", "--model_preset=unet-tiny", "--max_steps=1", "--log_every=1", *extra]
        config = load_config(None, args)
        config.category_weights = {category: 1.0}
        train(config, text_encoder=text_encoder)
        return json.loads((run / "metrics.jsonl").read_text().splitlines()[0])["sigma_mean"]

    high = "--method_config.relation_logit_mean=3"
    assert sigma_mean("position", high) > sigma_mean("position") + 0.2
    assert sigma_mean("counting", high) == sigma_mean("counting")
