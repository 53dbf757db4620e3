"""bench.common.model_names: which checkpoints a suite measures, checked before anything is timed."""

from argparse import Namespace

import pytest

from bench.common import bench_registry, model_names


def _registry():
    return bench_registry(Namespace(checkpoints=[], device="cpu"))


def test_named_models_come_back_in_order_and_none_means_every_one_of_the_modality() -> None:
    registry = _registry()
    assert model_names(Namespace(models="shapes-dmd2,shapes-teacher"), registry, "image") == ["shapes-dmd2", "shapes-teacher"]
    every = model_names(Namespace(models=""), registry, "image")
    assert {"shapes-teacher", "shapes-dmd2"} <= set(every)
    assert all(registry.card(m).modality == "image" for m in every)


@pytest.mark.parametrize("models", ["shapes-teacher,shapes-guidance", "shapes-teacher,text-teacher", "shapes-techer"])
def test_an_unknown_or_other_modality_model_stops_the_suite_before_it_starts(models: str) -> None:
    with pytest.raises(SystemExit, match="not image checkpoints") as stopped:
        model_names(Namespace(models=models), _registry(), "image")
    assert "known: " in str(stopped.value) and "shapes-teacher" in str(stopped.value)
