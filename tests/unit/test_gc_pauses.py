"""bench.common.gc_pauses: the collector's pauses counted per generation and timed, the callback always removed."""

import gc

import pytest

from bench.common import GcPauses, gc_pauses


def test_gc_pauses_counts_collections_by_generation_and_times_them():
    with gc_pauses() as pauses:
        gc.collect(0)
        gc.collect(2)
        gc.collect(2)
    assert pauses.collections[0] >= 1 and pauses.collections[2] >= 2
    assert pauses.total_ms >= pauses.max_ms > 0
    report = pauses.as_dict()
    assert report["gc_collections"]["gen2"] == pauses.collections[2]
    assert report["gc_max_ms"] == pauses.max_ms


def test_gc_pauses_removes_its_callback_even_when_the_block_raises():
    before = list(gc.callbacks)
    with pytest.raises(ValueError, match="boom"), gc_pauses():
        raise ValueError("boom")
    assert gc.callbacks == before
    with gc_pauses() as quiet:
        pass
    assert quiet == GcPauses()
