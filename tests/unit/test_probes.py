"""The diagnostic probes' measures, checked on the shapes world's own renders, where the answer is known."""

from __future__ import annotations

import dataclasses
import importlib.util
import random

import pytest

from tests.conftest import REPO
from trainer.worlds import shapes


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


layout = _load("probe_layout_by_step")
diversity = _load("probe_colour_diversity")
OPPOSITE = {"left_of": "right_of", "right_of": "left_of", "above": "below", "below": "above"}


def test_layout_measure_reads_every_rendered_relation_and_rejects_its_opposite() -> None:
    rng = random.Random(3)
    scenes = [shapes.sample_scene(rng, "position") for _ in range(40)]
    images = shapes.to_uint8(shapes.render(scenes))
    assert all(layout.relation_agrees(image, s.condition) for image, s in zip(images, scenes))
    flipped = [dataclasses.replace(s.condition, relation=OPPOSITE[s.condition.relation]) for s in scenes]
    assert not any(layout.relation_agrees(image, c) for image, c in zip(images, flipped))


def test_layout_measure_refuses_a_condition_without_a_relation() -> None:
    scene = shapes.sample_scene(random.Random(0), "single_object")
    with pytest.raises(ValueError, match="needs a position scene"):
        layout.relation_agrees(shapes.to_uint8(shapes.render([scene]))[0], scene.condition)


def test_colour_report_names_the_entropy_and_rounded_shares() -> None:
    line = diversity.describe("renders", {colour: 1 / 8 for colour in shapes.COLOR_NAMES})
    assert line.startswith("renders: entropy 3.00 bits {") and "'red': 0.12" in line
    assert diversity.describe("one", {"yellow": 1.0}) == "one: entropy 0.00 bits {'yellow': 1.0}"
