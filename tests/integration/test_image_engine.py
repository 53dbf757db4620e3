"""The image engine contract, on a tiny model trained in the test and on a tiny random one."""

import shutil

import numpy as np
import pytest
import torch

from engines.base import Engine
from engines.card import ModelCard
from engines.errors import CheckpointError, InvalidRequest
from engines.registry import Registry
from engines.requests import ImageRequest
from trainer.image_task import export_checkpoint
from trainer.networks import build_network


def pixels(result):
    return np.stack([np.asarray(im) for im in result.images])


@pytest.fixture(scope="module")
def engine(tiny_checkpoint):
    return Registry([tiny_checkpoint[0]], device="cpu").engine("tiny-cpu")


def test_engine_satisfies_the_protocol(engine):
    assert isinstance(engine, Engine)


def test_same_seed_same_images_and_batch_items_reproduce_alone(engine):
    a = engine.generate(ImageRequest("a blue square", seed=11, steps=2, batch=3))
    b = engine.generate(ImageRequest("a blue square", seed=11, steps=2, batch=3))
    assert np.array_equal(pixels(a), pixels(b))
    alone = engine.generate(ImageRequest("a blue square", seed=12, steps=2))
    assert np.array_equal(pixels(alone)[0], pixels(a)[1])  # image i of a batch is seed + i
    other = engine.generate(ImageRequest("a blue square", seed=99, steps=2))
    assert not np.array_equal(pixels(other)[0], pixels(a)[0])


def test_stream_yields_a_preview_per_step_and_ends_with_generate(engine):
    request = ImageRequest("two green triangles", seed=5, steps=4, guidance=1.0)
    states = list(engine.stream(request))
    assert [s.step for s in states] == [1, 2, 3, 4]
    assert [s.final for s in states] == [False, False, False, True]
    assert [s.timings.nfe for s in states] == [1, 2, 3, 4]  # guidance 1.0: no CFG
    assert np.array_equal(pixels(states[-1]), pixels(engine.generate(request)))
    assert all(s.seed == 5 and s.model_id == "tiny-cpu" for s in states)
    assert states[-1].timings.run_ms > 0


def test_random_seed_is_reported_and_reproduces(engine):
    first = engine.generate(ImageRequest("a pink cross", steps=2))
    again = engine.generate(ImageRequest("a pink cross", seed=first.seed, steps=2))
    assert np.array_equal(pixels(first), pixels(again))


def test_engine_refuses_other_request_types(engine):
    with pytest.raises(InvalidRequest, match="takes an ImageRequest"):
        list(engine.stream("a red circle"))


def test_cache_is_bounded_and_unloads(tiny_checkpoint, tmp_path):
    for name in ("copy-a", "copy-b"):
        target = tmp_path / name
        shutil.copytree(tiny_checkpoint[0] / "tiny-cpu", target)
        card = target / "card.json"
        card.write_text(card.read_text().replace('"tiny-cpu"', f'"{name}"'))
    registry = Registry([tiny_checkpoint[0], tmp_path], device="cpu", cache_size=2)
    first = registry.engine("tiny-cpu")
    registry.engine("copy-a")
    registry.engine("copy-b")
    assert registry.loaded() == [("copy-a", "torch"), ("copy-b", "torch")]
    assert first.denoiser is None  # evicted engines release their weights


def random_checkpoint(directory, model_id="random-tiny"):
    torch.manual_seed(0)
    card = ModelCard(id=model_id, modality="image", role="student", method="random", default_steps=1, resolution=16)
    return export_checkpoint(build_network("dit-tiny"), directory / model_id, card, dtype="float32")


def test_tiny_random_checkpoint_saves_and_reloads_through_the_registry(tmp_path, text_encoder):
    path = random_checkpoint(tmp_path)
    assert {p.name for p in path.iterdir()} == {"transformer", "scheduler", "card.json", "README.md"}
    registry = Registry([tmp_path], device="cpu")
    engine = registry.engine("random-tiny")
    reference = build_network("dit-tiny")
    torch.manual_seed(0)
    reference = build_network("dit-tiny")
    for (name, a), (_, b) in zip(reference.state_dict().items(), engine.denoiser.state_dict().items()):
        assert torch.equal(a, b), name
    assert engine.generate(ImageRequest("a red circle", seed=0)).images[0].size == (16, 16)


def test_damaged_checkpoints_fail_clearly_and_the_rest_keep_serving(tmp_path, text_encoder):
    random_checkpoint(tmp_path, "good")
    truncated = random_checkpoint(tmp_path, "truncated")
    weights = truncated / "transformer" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    no_config = random_checkpoint(tmp_path, "no-config")
    (no_config / "transformer" / "config.json").unlink()
    registry = Registry([tmp_path], device="cpu")
    with pytest.raises(CheckpointError, match="may be truncated"):
        registry.engine("truncated")
    with pytest.raises(CheckpointError, match="has no config.json"):
        registry.engine("no-config")
    assert registry.engine("good").generate(ImageRequest("a red circle", seed=0)).final
