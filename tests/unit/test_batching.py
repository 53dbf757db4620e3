"""Dynamic batching: the batcher's rules on a fake batch function (fast, no model), then the real path on the
tiny checkpoint: batched images equal unbatched ones, and the Image tab's handler serves concurrent callers."""

import threading
import time

import gradio as gr
import numpy as np
import pytest

from engines.errors import InvalidRequest
from engines.requests import ImageRequest
from studio.app import StudioSettings, build_ui
from studio.batching import MAX_WINDOW_MS, Batcher, BatchSettings
from studio.image_tab import ImageHandlers

MODEL = "tiny-cpu"
TIMEOUT_S = 30  # a hung caller fails the test instead of hanging it
# Batched kernels may round differently from batch-1 ones; allowed: 2/255 per pixel. On this CPU it is exact (0).
PIXEL_TOLERANCE = 2


class FakeEngine:
    """A batch function that records every batch and yields `steps` results per request: (request, step)."""

    def __init__(self, steps: int = 3, delay_s: float = 0.0, fail_keys: tuple = ()) -> None:
        self.steps, self.delay_s, self.fail_keys = steps, delay_s, fail_keys
        self.batches: list[list] = []
        self.lock = threading.Lock()

    def __call__(self, key, requests):
        with self.lock:
            self.batches.append(list(requests))
        if key in self.fail_keys:
            raise InvalidRequest(f"cannot run {key!r}: pretend the engine refused it")
        for step in range(1, self.steps + 1):
            time.sleep(self.delay_s)
            yield [(request, step) for request in requests]


def call_together(fns, timeout=TIMEOUT_S) -> list:
    """Run the functions in threads released at once; their return values or the exceptions they raised, in order."""
    out: list = [None] * len(fns)
    barrier = threading.Barrier(len(fns))

    def run(i, fn):
        barrier.wait()
        try:
            out[i] = fn()
        except Exception as err:  # noqa: BLE001 - the test inspects it
            out[i] = err

    threads = [threading.Thread(target=run, args=(i, fn), daemon=True) for i, fn in enumerate(fns)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)
        assert not thread.is_alive(), "a caller hung"
    return out


def collect(batcher, key, request, images=1):
    return list(batcher.stream(key, request, images))


def test_concurrent_requests_merge_and_each_gets_its_own_results():
    engine = FakeEngine()
    batcher = Batcher(engine, BatchSettings(window_ms=MAX_WINDOW_MS, max_images=10))  # full at 10: no waiting for the window
    outs = call_together([lambda i=i: collect(batcher, "k", f"request {i}") for i in range(10)])
    assert [len(b) for b in engine.batches] == [10]
    for i, items in enumerate(outs):
        assert [item.result for item in items] == [(f"request {i}", step) for step in (1, 2, 3)]  # every step, its own slice
        assert {(item.requests, item.images, item.others) for item in items} == {(10, 10, 9)}
    batcher.close()


def test_window_zero_never_merges():
    engine = FakeEngine(delay_s=0.005)
    batcher = Batcher(engine, BatchSettings(window_ms=0, max_images=32))
    outs = call_together([lambda i=i: collect(batcher, "k", i) for i in range(8)])
    assert [len(b) for b in engine.batches] == [1] * 8
    assert all(item.requests == 1 for items in outs for item in items)
    batcher.close()


def test_the_bound_holds_and_requests_queued_meanwhile_join_the_next_batch():
    engine = FakeEngine(delay_s=0.01)
    batcher = Batcher(engine, BatchSettings(window_ms=50, max_images=32))
    outs = call_together([lambda i=i: collect(batcher, "k", i) for i in range(40)])
    sizes = [len(b) for b in engine.batches]
    assert len(sizes) >= 2 and max(sizes) <= 32 and sum(sizes) == 40
    assert sorted(r for b in engine.batches for r in b) == list(range(40))  # every request ran exactly once
    assert [items[-1].result for items in outs] == [(i, 3) for i in range(40)]
    batcher.close()
    # Images are counted, not requests: 3-image requests under a bound of 8 make batches of at most 2.
    engine.batches.clear()
    batcher = Batcher(engine, BatchSettings(window_ms=50, max_images=8))
    call_together([lambda i=i: collect(batcher, "k", i, images=3) for i in range(6)])
    assert max(len(b) for b in engine.batches) == 2
    # A request larger than the bound still runs, alone.
    engine.batches.clear()
    assert collect(batcher, "k", "big", images=9)[-1].result == ("big", 3)
    assert engine.batches == [["big"]]
    batcher.close()


def test_requests_with_different_settings_never_share_a_batch():
    engine = FakeEngine()
    batcher = Batcher(engine, BatchSettings(window_ms=200, max_images=32))
    keys = ["a", "b"] * 4
    outs = call_together([lambda i=i, k=k: collect(batcher, k, (k, i)) for i, k in enumerate(keys)])
    assert all(len({key for key, _ in batch}) == 1 for batch in engine.batches)
    assert [items[-1].result[0] for items in outs] == [(k, i) for i, k in enumerate(keys)]
    batcher.close()


def test_a_failing_batch_fails_only_its_own_requests_with_the_real_message():
    engine = FakeEngine(delay_s=0.005, fail_keys=("bad",))
    batcher = Batcher(engine, BatchSettings(window_ms=100, max_images=32))
    keys = ["bad", "good"] * 3
    outs = call_together([lambda i=i, k=k: collect(batcher, k, i) for i, k in enumerate(keys)])
    for key, out in zip(keys, outs):
        if key == "bad":
            assert isinstance(out, InvalidRequest) and "pretend the engine refused it" in str(out)
        else:
            assert [item.result[1] for item in out] == [1, 2, 3]
    errors = [out for out in outs if isinstance(out, Exception)]
    assert len({id(e) for e in errors}) == len(errors)  # each caller raises its own copy, in its own thread
    assert collect(batcher, "good", "after")[-1].result == ("after", 3)  # the worker lives on
    batcher.close()


def test_a_batch_function_returning_the_wrong_count_fails_that_batch():
    batcher = Batcher(lambda key, requests: iter([[1]]), BatchSettings(window_ms=200, max_images=2))
    outs = call_together([lambda i=i: collect(batcher, "k", i) for i in range(2)])
    assert all(isinstance(out, RuntimeError) and "returned 1 results for 2 requests" in str(out) for out in outs)
    batcher.close()


def test_a_caller_that_leaves_does_not_break_the_batch():
    engine = FakeEngine(steps=4, delay_s=0.02)
    batcher = Batcher(engine, BatchSettings(window_ms=MAX_WINDOW_MS, max_images=3))

    def leaver():
        stream = batcher.stream("k", "leaver")
        first = next(stream)
        stream.close()  # what Gradio does when the browser tab closes
        return first

    outs = call_together([leaver, lambda: collect(batcher, "k", "a"), lambda: collect(batcher, "k", "b")])
    assert outs[0].result == ("leaver", 1)
    assert [item.result for item in outs[1]] == [("a", step) for step in (1, 2, 3, 4)]
    assert [item.result for item in outs[2]] == [("b", step) for step in (1, 2, 3, 4)]
    assert [len(b) for b in engine.batches] == [3]
    batcher.close()


@pytest.mark.parametrize(
    ("window", "images", "message"),
    [
        (-1.0, 32, "batch window must be from 0 to 1000 ms"),
        (5000.0, 32, "batch window must be from 0 to 1000 ms"),
        (float("nan"), 32, "batch window must be from 0 to 1000 ms"),
        (5.0, 0, "max images per batch must be a whole number of at least 1, got 0"),
        (5.0, 2.5, "max images per batch must be a whole number of at least 1, got 2.5"),
    ],
)
def test_bad_settings_are_clear_errors(window, images, message):
    with pytest.raises(ValueError, match=message):
        BatchSettings(window, images)
    with pytest.raises(ValueError, match=message):
        StudioSettings(batch_window_ms=window, max_batch_images=images)


def test_app_refuses_bad_batching_flags():
    import app

    args = app.parse_args(["--batch-window-ms", "2.5", "--max-batch-images", "16"])
    assert (args.batch_window_ms, args.max_batch_images) == (2.5, 16)
    with pytest.raises(SystemExit, match=r"batch window must be from 0 to 1000 ms .*got -1.0"):
        app.main(["--batch-window-ms", "-1", "--device", "cpu", "--no-train-tab"])
    with pytest.raises(SystemExit, match="max images per batch must be a whole number of at least 1, got 0"):
        app.main(["--max-batch-images", "0", "--device", "cpu", "--no-train-tab"])


# ---------------------------------------------------------------------------- the real engine and handler


def pixels(images) -> np.ndarray:
    return np.stack([np.asarray(image) for image in images]).astype(int)


def test_batched_images_equal_what_each_request_gets_alone(studio_registry, torch_one_thread):
    engine = studio_registry.engine(MODEL)
    requests = [
        ImageRequest("a red circle to the left of a blue square", seed=3, steps=3, batch=2),
        ImageRequest("three yellow triangles", seed=10, steps=3),
        ImageRequest("a large white cross", seed=3, steps=3, batch=3),  # same seed as the first, other prompt
    ]
    batched = list(engine.stream_many(requests))
    assert len(batched) == 3 and all(len(step) == 3 for step in batched)
    for i, request in enumerate(requests):
        alone = list(engine.stream(request))
        for one, many in zip(alone, (step[i] for step in batched)):  # every step's preview too, not only the final
            assert (one.seed, one.step, one.final, len(many.images)) == (many.seed, many.step, many.final, request.batch)
            assert np.abs(pixels(one.images) - pixels(many.images)).max() <= PIXEL_TOLERANCE
    with pytest.raises(InvalidRequest, match="must share steps and guidance"):
        list(engine.stream_many([ImageRequest("a", steps=1), ImageRequest("b", steps=2)]))


def test_handler_serves_concurrent_callers_in_one_batch(studio_registry, torch_one_thread):
    settings = StudioSettings(device="cpu", batch_window_ms=MAX_WINDOW_MS, max_batch_images=4)  # full at 4 images
    batched, alone = ImageHandlers(studio_registry, settings), ImageHandlers(studio_registry, StudioSettings(batch_window_ms=0))
    assert alone.batcher is None
    asks = [("a red circle to the left of a blue square", 1, 2), ("three yellow triangles", 5, 1), ("a large white cross", 9, 1)]
    outs = call_together([lambda a=a: list(batched.generate(a[0], MODEL, a[1], 3, None, a[2])) for a in asks])
    for (prompt, seed, batch), out in zip(asks, outs):
        assert len(out) == 3  # a live preview at every step, then the final
        assert all("Denoising" in info for *_, info in out[:-1])
        info = out[-1][3]
        assert f"**seed** {seed} · **steps** 3" in info and "**batched with** 2 others (4 images)" in info
        reference = list(alone.generate(prompt, MODEL, seed, 3, None, batch))[-1]
        assert "batched" not in reference[3]
        got, want = [image for image, _ in out[-1][2]], [image for image, _ in reference[2]]
        assert np.abs(pixels(got) - pixels(want)).max() <= PIXEL_TOLERANCE
    assert batched.batcher.batches == 1


def test_handler_failures_stay_with_their_requests(studio_registry, torch_one_thread):
    handlers = ImageHandlers(studio_registry, StudioSettings(device="cpu", batch_window_ms=200, max_batch_images=8))
    calls = [
        lambda: list(handlers.generate("a red circle", MODEL, 1, 2, None, 1, "compiled")),  # the engine refuses on CPU
        lambda: list(handlers.generate("", MODEL, 1, 2, None, 1)),  # refused before it reaches the batcher
        lambda: list(handlers.generate("three yellow triangles", MODEL, 2, 2, None, 1)),
        lambda: list(handlers.generate("a large white cross", MODEL, 3, 2, None, 1)),
    ]
    compiled, empty, *good = call_together(calls)
    assert isinstance(compiled, gr.Error) and "runs on a CUDA GPU only" in compiled.message
    assert isinstance(empty, gr.Error) and "prompt is empty" in empty.message
    assert all(not isinstance(out, Exception) and out[-1][3].startswith("**seed**") for out in good)


def test_generate_event_concurrency_follows_batching(studio_registry):
    def generate_fn(settings):
        demo = build_ui(studio_registry, settings)
        return next(fn for fn in demo.fns.values() if fn.api_name == "generate")

    on = generate_fn(StudioSettings(batch_window_ms=5, max_batch_images=24))
    assert (on.concurrency_limit, on.concurrency_id) == (24, "image-batch")
    off = generate_fn(StudioSettings(batch_window_ms=0, max_batch_images=24))
    assert (off.concurrency_limit, off.concurrency_id) == (1, "gpu")  # one at a time, shared with the other tabs


def test_bench_serve_configurations_and_batch_sizes():
    from bench.load import Mode, batch_requests, modes

    assert modes("0,5", "32,8") == [Mode(0.0, 32), Mode(5.0, 32), Mode(5.0, 8)]  # off once, on with every bound
    assert (Mode(0.0, 32).tag, Mode(5.0, 8).tag) == ("off", "on_5ms_8img")
    info = "**seed** 3 · **steps** 1 · … · **batched with** 6 others (7 images) · **queued** 12 ms"
    assert (batch_requests(info), batch_requests("**seed** 3 · **batched** alone"), batch_requests("**seed** 3")) == (7, 1, 1)
