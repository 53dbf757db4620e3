"""Cards and the registry, without loading weights."""

import json

import pytest

from engines.card import ModelCard, load_card
from engines.errors import BackendUnavailable, CheckpointError
from engines.registry import Registry


def write_card(directory, **overrides):
    directory.mkdir(parents=True, exist_ok=True)
    card = {
        "id": directory.name,
        "modality": "image",
        "role": "teacher",
        "method": "flow_matching",
        "default_steps": 25,
        "resolution": 64,
    } | overrides
    (directory / "card.json").write_text(json.dumps(card))
    return directory


def test_card_round_trip(tmp_path):
    card = ModelCard(
        id="m1", modality="image", role="student", method="dmd2", default_steps=1, resolution=64, metrics={"overall": 0.9}
    )
    card.save(tmp_path)
    loaded = load_card(tmp_path)
    assert loaded.to_json() == card.to_json() and loaded.path == tmp_path


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"modality": "audio"}, "names modality 'audio'; known modalities: image, video, 3d, edit, text"),
        ({"role": "critic"}, "names role 'critic'"),
        ({"default_steps": 0}, "default_steps must be a positive integer"),
        ({"id": "../escape"}, "card id"),
    ],
)
def test_bad_cards_are_rejected_with_the_reason(tmp_path, overrides, message):
    with pytest.raises(CheckpointError, match=message.replace("(", r"\(")):
        load_card(write_card(tmp_path / "bad", **overrides))


def test_missing_and_malformed_card_files(tmp_path):
    with pytest.raises(CheckpointError, match="has no card.json"):
        load_card(tmp_path)
    (tmp_path / "card.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_card(tmp_path)
    (tmp_path / "card.json").write_text(json.dumps({"id": "x", "modality": "image"}))
    with pytest.raises(CheckpointError, match="lacks required field"):
        load_card(tmp_path)


def test_registry_discovers_good_cards_and_reports_bad_ones(tmp_path):
    write_card(tmp_path / "teacher")
    write_card(tmp_path / "student", role="student", default_steps=1)
    write_card(tmp_path / "weird", modality="smell")
    (tmp_path / "not-a-checkpoint").mkdir()
    registry = Registry([tmp_path], device="cpu")
    assert sorted(c.id for c in registry.cards()) == ["student", "teacher"]
    assert registry.default("image").id == "student"  # students first: they are the fast path
    assert "smell" in registry.problems[str(tmp_path / "weird")]
    assert registry.loaded() == []  # nothing loaded by discovery


def test_registry_errors_name_what_is_known(tmp_path):
    write_card(tmp_path / "teacher")
    write_card(tmp_path / "clip", modality="video")
    write_card(tmp_path / "mesh", modality="3d")
    registry = Registry([tmp_path], device="cpu")
    with pytest.raises(CheckpointError, match="unknown model id 'nope'; known: clip, mesh, teacher"):
        registry.card("nope")
    with pytest.raises(BackendUnavailable, match="no engine for modality '3d'"):
        registry.engine("mesh")
    with pytest.raises(CheckpointError, match="has no transformer/ folder"):  # video has an engine: the card's files are checked
        registry.engine("clip")
    with pytest.raises(CheckpointError, match="no edit checkpoints"):
        registry.default("edit")


def test_registry_add_and_hub_ids(tmp_path):
    registry = Registry([tmp_path / "empty"], device="cpu")
    extra = write_card(tmp_path / "elsewhere" / "mine")
    assert registry.add(extra).id == "mine"
    assert [c.id for c in registry.cards()] == ["mine"]
    with pytest.raises(CheckpointError, match="not available offline"):
        registry.add("stabilityai/sd-turbo")
    with pytest.raises(CheckpointError, match="no checkpoint directory"):
        registry.add(str(tmp_path / "missing"))


def test_duplicate_ids_are_reported(tmp_path):
    write_card(tmp_path / "a", id="same")
    write_card(tmp_path / "b", id="same")
    registry = Registry([tmp_path], device="cpu")
    assert len(registry.cards()) == 1
    assert any("duplicate model id 'same'" in m for m in registry.problems.values())


def test_unknown_device_is_refused():
    with pytest.raises(BackendUnavailable, match="unknown device"):
        Registry([], device="tpu")
