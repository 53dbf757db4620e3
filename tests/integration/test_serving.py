"""A real studio with dynamic batching on, driven by concurrent gradio_client clients through the `generate` API."""

import re
import threading
from pathlib import Path

import pytest
from PIL import Image

from bench.common import free_port

MODEL = "tiny-cpu"
CLIENTS = 4


@pytest.fixture(scope="module")
def studio_url(studio_registry, torch_one_thread):
    from studio.app import StudioSettings, build_ui, launch

    # A wide window, full at 4 images: the four clients' requests meet in the batcher even on a busy machine.
    settings = StudioSettings(
        host="127.0.0.1", port=free_port(), device="cpu", batch_window_ms=500, max_batch_images=CLIENTS, train_tab=False
    )
    studio_registry.engine(MODEL)  # loaded up front: the clients wait only for generation
    demo = build_ui(studio_registry, settings)
    launch(demo, settings, prevent_thread_lock=True, quiet=True)
    yield f"http://127.0.0.1:{settings.port}/"
    demo.close()


def test_concurrent_clients_all_succeed_and_share_a_batch(studio_url, studio_registry, tmp_path):
    from gradio_client import Client

    clients = [Client(studio_url, verbose=False, download_files=str(tmp_path / str(i))) for i in range(CLIENTS)]
    barrier = threading.Barrier(CLIENTS)
    outputs: list = [None] * CLIENTS

    def user(i: int) -> None:
        barrier.wait()
        try:
            job = clients[i].submit(f"{i + 1} red circles", MODEL, 100 + i, 2, 1.0, 1, "torch", api_name="/generate")
            outputs[i] = job.result(timeout=60)
        except Exception as err:  # noqa: BLE001 - reported below
            outputs[i] = err

    threads = [threading.Thread(target=user, args=(i,), daemon=True) for i in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(90)
    assert [o for o in outputs if not isinstance(o, tuple)] == []  # no failure, no hang

    resolution = studio_registry.card(MODEL).resolution
    batch_sizes = []
    for i, (_preview, gallery, originals, info) in enumerate(outputs):
        assert f"**seed** {100 + i} · **steps** 2" in info
        assert len(gallery) == len(originals) == 1
        with Image.open(Path(originals[0]["image"])) as image:
            assert image.size == (resolution, resolution)
        with Image.open(Path(gallery[0]["image"])) as image:
            assert image.size == (256, 256)  # shown upscaled
        found = re.search(r"\*\*batched with\*\* (\d+) other", info)
        batch_sizes.append(int(found.group(1)) + 1 if found else 1)
    assert max(batch_sizes) > 1, batch_sizes  # at least one request ran in a batch with others
