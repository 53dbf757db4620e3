"""The fixed (noise, teacher sample) pair set (trainer/ode_pairs.py) and its two users: reflow's
`pair_set` and DMD's regression loss in DMD2 (`regression_weight`), on the tiny CPU teacher."""

import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from engines.requests import ImageRequest
from trainer import distill
from trainer.config import ConfigError, load_config
from trainer.loop import StopFlag, train
from trainer.methods.dmd2 import DMD2, regression_loss
from trainer.methods.reflow import Reflow
from trainer.ode_pairs import (
    PairRecipe,
    load_pair_set,
    make_pair_set,
    network_digest,
    ode_pair_set,
    save_pair_set,
    shared_pair_path,
)

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def teacher(tiny_image_root):
    return distill.load_teacher(str(tiny_image_root / "tiny-cpu"), CPU, "dmd2")


def recipe_for(teacher, **changes) -> PairRecipe:
    fields = dict(
        teacher=teacher.id,
        steps=3,
        guidance=2.0,
        shift=teacher.scheduler_shift,
        resolution=teacher.card.resolution,
        count=5,
        seed=7,
        max_tokens=40,
    )
    return PairRecipe(**(fields | changes))


def test_pair_i_is_what_the_teacher_engine_draws_for_its_caption_and_seed(teacher, studio_registry, text_encoder):
    recipe = recipe_for(teacher)
    pairs = make_pair_set(recipe, teacher.network, text_encoder, CPU, chunk=2)  # chunks of 2: batching must not matter
    assert len(pairs) == 5 and pairs.samples.dtype == torch.float16
    assert pairs.seeds.tolist() == [35, 36, 37, 38, 39]  # seed * count + i: sets of other seeds do not overlap
    captions = text_encoder.tokenizer.batch_decode(pairs.tokens["input_ids"], skip_special_tokens=True)
    assert len(set(captions)) > 1  # the world's captions, not one prompt repeated
    engine = studio_registry.engine("tiny-cpu")
    for i in (0, 4):
        made = engine.generate(ImageRequest(captions[i], seed=int(pairs.seeds[i]), steps=3, guidance=2.0)).images[0]
        ours = ((pairs.samples[i].float() + 1) / 2 * 255).round().clamp(0, 255).permute(1, 2, 0).numpy()
        assert np.abs(np.asarray(made, dtype=np.float32) - ours).max() <= 2.0  # uint8 rounding, float16 storage


def test_a_saved_set_round_trips_and_is_reused_only_for_its_own_recipe(teacher, text_encoder, tmp_path, monkeypatch):
    recipe = recipe_for(teacher, count=3)
    path = tmp_path / "pairs.safetensors"
    made = ode_pair_set(path, recipe, teacher.network, text_encoder, CPU)
    assert path.is_file() and not list(tmp_path.glob(".*.tmp"))  # written atomically, nothing left behind
    loaded = load_pair_set(path)
    assert loaded.recipe == recipe
    assert made.seconds > 0 and loaded.seconds == pytest.approx(made.seconds, abs=1e-3)  # its cost travels with it
    assert torch.equal(loaded.samples, made.samples) and torch.equal(loaded.seeds, made.seeds)
    assert all(torch.equal(loaded.tokens[k], made.tokens[k]) for k in made.tokens)

    import trainer.ode_pairs as ode_pairs

    monkeypatch.setattr(ode_pairs, "make_pair_set", lambda *a, **k: pytest.fail("a matching set must be reused, not remade"))
    again = ode_pair_set(path, recipe, teacher.network, text_encoder, CPU)
    assert torch.equal(again.samples, made.samples)
    before = path.read_bytes()
    with pytest.raises(ConfigError, match="holds pairs made by .*steps=3.*asks for .*steps=8.*delete the file"):
        ode_pair_set(path, recipe_for(teacher, count=3, steps=8), teacher.network, text_encoder, CPU)
    assert path.read_bytes() == before  # refused, not overwritten: a resumed run may have trained on it

    batch = loaded.batch(torch.tensor([2, 0]), CPU)
    assert batch["noise"].shape == batch["samples"].shape == (2, 3, recipe.resolution, recipe.resolution)
    assert batch["samples"].dtype == torch.float32 and batch["actions"] is None
    assert torch.equal(batch["tokens"]["input_ids"], loaded.tokens["input_ids"][[2, 0]])
    g = torch.Generator().manual_seed(0)
    first = loaded.draw(64, g)
    assert first.min() >= 0 and first.max() < 3 and torch.equal(first, loaded.draw(64, torch.Generator().manual_seed(0)))


def test_damaged_or_foreign_pair_files_are_refused_clearly(teacher, text_encoder, tmp_path):
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00not a safetensors file")
    with pytest.raises(ConfigError, match="cannot be read"):
        load_pair_set(garbage)
    foreign = tmp_path / "foreign.safetensors"
    save_file({"x": torch.zeros(2)}, str(foreign))
    with pytest.raises(ConfigError, match="not a Distillery pair set"):
        load_pair_set(foreign)
    pairs = make_pair_set(recipe_for(teacher, count=2), teacher.network, text_encoder, CPU)
    pairs.samples = pairs.samples[:1]  # one image for two pairs
    truncated = save_pair_set(pairs, tmp_path / "truncated.safetensors")
    with pytest.raises(ConfigError, match="does not match its recipe"):
        load_pair_set(truncated)
    with pytest.raises(ConfigError, match="count"):
        recipe_for(teacher, count=0)
    with pytest.raises(ConfigError, match="guidance"):
        recipe_for(teacher, guidance=-1.0)


# ----------------------------------------------------------------------------- users


REGRESSION = (
    "--method_config.regression_weight=0.25",
    "--method_config.regression_pairs=6",
    "--method_config.regression_pair_steps=2",
)


def dmd2_config(dmd2_args, name: str, *extra: str):
    return load_config("configs/tiny-cpu.yaml", dmd2_args(name, *REGRESSION, *extra))


def logged(run_dir) -> dict[int, dict]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: {k: v for k, v in r.items() if k.startswith("loss")} for r in records if "loss/critic" in r}


def test_dmd2_with_the_regression_loss_trains_logs_and_resumes_exactly(dmd2_args, text_encoder, tmp_path):
    train(dmd2_config(dmd2_args, "straight"), text_encoder=text_encoder)
    pairs = load_pair_set(tmp_path / "straight" / "ode-pairs.safetensors")
    assert (len(pairs), pairs.recipe.steps, pairs.recipe.guidance) == (6, 2, 2.0)  # the real score's CFG: the card's 2.0
    stop = StopFlag()
    broken = dmd2_config(dmd2_args, "broken")
    train(broken, stop=stop, on_step=lambda step: stop.set() if step == 3 else None, text_encoder=text_encoder)
    train(dmd2_config(dmd2_args, "broken"), text_encoder=text_encoder)  # reuses its pair file
    a, b = logged(tmp_path / "straight"), logged(tmp_path / "broken")
    card = json.loads((tmp_path / "straight" / "model" / "card.json").read_text())
    assert card["data"]["ode_pairs"] == {"count": 6, "teacher": "tiny-cpu", "steps": 2, "guidance": 2.0} | {
        "made_in_s": round(pairs.seconds, 1)
    }
    generator_steps = [s for s in a if "loss/regression" in a[s]]
    assert generator_steps == [1, 3, 5]  # every generator step (critic_updates 2), never a critic-only step
    assert all(math.isfinite(a[s]["loss/regression"]) and a[s]["loss/regression"] > 0 for s in generator_steps)
    for step in (4, 5):  # the steps after the kill
        assert a[step] == b[step]
    # on block means the same run logs a smaller distance (edges no longer count) through the same loop
    train(dmd2_config(dmd2_args, "pooled", "--method_config.regression_pool=4"), text_encoder=text_encoder)
    pooled = logged(tmp_path / "pooled")
    assert 0 < pooled[1]["loss/regression"] < a[1]["loss/regression"]


def test_runs_share_a_pair_set_through_the_cache_and_each_card_counts_its_making(dmd2_args, text_encoder, tmp_path, capsys):
    cache = tmp_path / "pair-cache"
    train(dmd2_config(dmd2_args, "first", f"--pair_cache={cache}"), text_encoder=text_encoder)
    shared = list(cache.glob("*.safetensors"))
    assert len(shared) == 1 and shared[0].name.startswith("tiny-cpu-")
    capsys.readouterr()
    train(dmd2_config(dmd2_args, "second", f"--pair_cache={cache}"), text_encoder=text_encoder)
    assert "pairs from the shared set" in capsys.readouterr().out
    first, second = (load_pair_set(tmp_path / name / "ode-pairs.safetensors") for name in ("first", "second"))
    assert torch.equal(first.samples, second.samples) and torch.equal(first.seeds, second.seeds)
    assert second.seconds == first.seconds > 0  # the making time travels with the set
    cards = [json.loads((tmp_path / name / "model" / "card.json").read_text()) for name in ("first", "second")]
    assert cards[0]["data"]["ode_pairs"] == cards[1]["data"]["ode_pairs"]
    # the second run trained on exactly the pairs the first made, so their logged regression losses agree
    assert logged(tmp_path / "first")[1]["loss/regression"] == logged(tmp_path / "second")[1]["loss/regression"]


def test_a_shared_set_is_keyed_by_recipe_and_teacher_weights(teacher, text_encoder, tmp_path):
    recipe = recipe_for(teacher)
    key = shared_pair_path(tmp_path, recipe, teacher.network)
    assert key == shared_pair_path(tmp_path, recipe, teacher.network)  # stable
    assert key != shared_pair_path(tmp_path, recipe_for(teacher, count=6), teacher.network)
    retrained = type(teacher.network).from_config(teacher.network.config)  # same id and recipe, other weights
    assert network_digest(retrained) != network_digest(teacher.network)
    assert key != shared_pair_path(tmp_path, recipe, retrained)
    # a damaged cache entry (another recipe's set under this name) is refused, and the run's own file not written
    save_pair_set(make_pair_set(recipe_for(teacher, count=3), teacher.network, text_encoder, CPU), key)
    with pytest.raises(ConfigError, match="shared pair set .* holds pairs made by"):
        ode_pair_set(tmp_path / "run" / "ode-pairs.safetensors", recipe, teacher.network, text_encoder, CPU, cache=key)
    assert not (tmp_path / "run" / "ode-pairs.safetensors").exists()


@pytest.mark.parametrize("pool", [1, 4])
def test_the_regression_loss_pulls_the_one_step_map_to_the_pairs(dmd2_args, text_encoder, pool):
    method = DMD2(dmd2_config(dmd2_args, "pull", f"--method_config.regression_pool={pool}"), CPU, text_encoder)
    assert method.args.regression_pool == pool
    generator = method.networks["generator"]
    optimizer = torch.optim.Adam(generator.parameters(), lr=1e-3)
    values = []
    for _ in range(12):  # the same 6 pairs each time: only the generator changes
        z, emb, teacher_images = method._pair_batch(6, torch.Generator().manual_seed(0))
        loss = regression_loss(distill.predict_x0(generator, z, torch.ones(6), emb), teacher_images, pool)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        values.append(loss.item())
    assert values[-1] < 0.8 * values[0]


def test_pooled_regression_compares_block_means_so_edges_are_left_free():
    """Pool p: a change whose p x p block means are zero (edge detail) costs nothing, one that moves mass between
    blocks (a size or a position) costs what it costs on block means; pool 1 is the pixel distance."""
    torch.manual_seed(0)
    teacher = torch.rand(2, 3, 16, 16)
    checker = torch.tensor([[1.0, -1.0], [-1.0, 1.0]]).repeat(8, 8) * 0.3  # zero mean in every 2x2 and 4x4 block
    assert regression_loss(teacher + checker, teacher, 4).item() < 1e-12
    assert regression_loss(teacher + checker, teacher, 2).item() < 1e-12
    assert regression_loss(teacher + checker, teacher, 1).item() == pytest.approx(0.5 * 0.09)
    moved = teacher.clone()
    moved[..., :4, :4] += 0.5  # one 4x4 block brighter: a low-frequency change
    expected = 0.5 * (0.5**2) / 16  # one of the 16 block means of each image and channel off by 0.5
    assert regression_loss(moved, teacher, 4).item() == pytest.approx(expected)
    assert regression_loss(moved, teacher, 1).item() == pytest.approx(expected)  # 16 px of 256 off by 0.5


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("--method_config.regression_pool=0", "regression_pool must be an integer >= 1"),
        ("--method_config.regression_pool=2.5", "regression_pool must be int"),
        ("--method_config.regression_pool=3", "regression_pool 3 does not divide the"),
        ("--method_config.regression_weight=-0.1", "regression_weight must be >= 0"),
        ("--method_config.regression_pairs=0", "regression_pairs >= 1"),
        ("--method_config.regression_pair_steps=0", "regression_pair_steps >= 1"),
    ],
)
def test_bad_regression_settings_are_refused(extra, message, dmd2_args, text_encoder):
    with pytest.raises(ConfigError, match=message):
        DMD2(dmd2_config(dmd2_args, "bad", extra), CPU, text_encoder)


def test_reflow_from_a_fixed_pair_set(tiny_image_root, text_encoder, tmp_path):
    from tests.integration.test_reflow_guidance import REFLOW, losses, tiny_config

    config = tiny_config(tmp_path, tiny_image_root, "reflow", "fixed", *REFLOW, "--method_config.pair_set=4")
    train(config, text_encoder=text_encoder)
    pairs = load_pair_set(tmp_path / "fixed" / "run" / "ode-pairs.safetensors")
    assert (len(pairs), pairs.recipe.steps, pairs.recipe.teacher) == (4, 3, "tiny-cpu")
    records = losses(tmp_path / "fixed" / "run")
    assert len(records) == 3 and all(math.isfinite(r["loss"]) for r in records)
    with pytest.raises(ConfigError, match="pair_set must be >= 0"):
        Reflow(tiny_config(tmp_path, tiny_image_root, "reflow", "bad", *REFLOW, "--method_config.pair_set=-1"), CPU, text_encoder)


def test_regression_weight_probe_measures_both_pulls(dmd2_args, text_encoder):
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location("probe_regression_weight", "scripts/probe_regression_weight.py")
    probe = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = probe  # its dataclass looks the module up while it loads
    spec.loader.exec_module(probe)
    method = DMD2(dmd2_config(dmd2_args, "probe", "--method_config.regression_weight=0.3"), CPU, text_encoder)
    batch = method.data_source()(0, 0, 0)
    pull = probe.pulls(method, batch, seed=1)
    assert pull.dmd_norm > 0 and pull.regression_norm > 0 and -1 <= pull.cosine <= 1
    assert method.args.regression_weight == 0.3  # restored
    again = probe.pulls(method, batch, seed=1)
    assert again == pull  # the same draw: the same numbers
    assert "ratio" in str(pull)
