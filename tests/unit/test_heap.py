"""engines/heap.py: freezing the heap after warm-up, thawing on unload, and measuring collector pauses."""

import gc

from engines.heap import GcPauses, freeze_heap, gc_pauses, thaw_heap


def test_freeze_moves_live_objects_out_of_collections_and_thaw_returns_them():
    assert gc.get_freeze_count() == 0
    keep = [[i] for i in range(1000)]  # long-lived objects, like a compiled graph's
    try:
        frozen = freeze_heap()
        assert frozen >= len(keep)
        assert gc.get_freeze_count() == frozen
        # the frozen objects are no longer tracked by any generation: a full collection walks fewer objects
        assert sum(gc.get_count()) < frozen
    finally:
        thaw_heap()
    assert gc.get_freeze_count() == 0


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
    try:
        with gc_pauses():
            raise ValueError("boom")
    except ValueError:
        pass
    assert gc.callbacks == before
    with gc_pauses() as quiet:
        pass
    assert quiet == GcPauses()
