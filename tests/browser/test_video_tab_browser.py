"""The Video tab in headless Chromium: an endless stream shows new frames live, follows the arrow keys and a
steered prompt, stops on Stop (no frame after that) and hands over an MP4; the stats line shows FPS.

Uses Debian's Chromium (`apt-get install -y chromium`), like test_studio_browser.py.
"""

import contextlib
import re
import time

import pytest

from tests.browser.chromium import TIMEOUT_MS, free_port, open_page

pytestmark = [pytest.mark.browser, pytest.mark.usefixtures("torch_one_thread")]

# Records, from the page, every distinct src the live frame has had (a new frame is a new file URL).
WATCH_FRAMES = """() => {
  window.videoSrcs = [];
  const check = () => document.querySelectorAll('#video-frame img').forEach(img => {
    if (img.src && !window.videoSrcs.includes(img.src)) window.videoSrcs.push(img.src);
  });
  new MutationObserver(check).observe(document.body, {subtree: true, childList: true, attributes: true});
}"""


@pytest.fixture(scope="module")
def live_streams(video_registry):
    """The student's engine streams currently open in the server (one entry each), to see them end."""
    engine = video_registry.engine("tiny-video-student")  # loaded up front, so the browser waits only for frames
    stream, open_streams = engine.stream, []

    def counted(request, controls=None):
        open_streams.append(request)
        try:
            yield from stream(request, controls)
        finally:
            open_streams.remove(request)

    engine.stream = counted
    yield open_streams
    del engine.stream  # the instance attribute goes; the class's method is back


@pytest.fixture(scope="module")
def studio_url(video_registry, live_streams):
    from studio.app import StudioSettings, build_ui, launch

    settings = StudioSettings(host="127.0.0.1", port=free_port(), device="cpu", train_tab=False)
    demo = build_ui(video_registry, settings)
    launch(demo, settings, prevent_thread_lock=True, quiet=True)
    yield f"http://127.0.0.1:{settings.port}/"
    demo.close()


@contextlib.contextmanager
def video_tab(url: str):
    """A page on the Video tab with an endless stream set up (not started) and the frame watcher installed."""
    with open_page(url) as page:
        page.get_by_role("tab", name="Video").click()
        page.locator("#video-start").wait_for()
        page.locator("#video-prompt textarea").fill("a red ball bouncing to the right")
        page.locator("#video-endless input").check()
        page.evaluate(WATCH_FRAMES)
        yield page


def frames_seen(page) -> int:
    return page.evaluate("window.videoSrcs.length")


def test_endless_stream_shows_frames_live_follows_keys_and_stops(studio_url, live_streams, tmp_path):
    from playwright.sync_api import expect

    began = time.perf_counter()
    with video_tab(studio_url) as page:
        page.locator("#video-start").click()

        # Frames arrive live: the image's src changes while the stream runs.
        page.wait_for_function("window.videoSrcs.length >= 3", timeout=TIMEOUT_MS)
        stats = page.locator("#video-stats")
        expect(stats).to_contain_text("streaming")
        expect(stats).to_contain_text("fps")
        expect(stats).to_contain_text("first frame")

        # Arrow keys hold an action while pressed; the pad's buttons do the same.
        page.keyboard.down("ArrowLeft")
        expect(stats).to_contain_text("action left")
        page.keyboard.up("ArrowLeft")
        expect(stats).to_contain_text("action none")
        page.locator("#video-up").click()
        expect(stats).to_contain_text("action up")

        # A new prompt mid-stream: the stream carries on from it.
        page.locator("#video-steer-prompt textarea").fill("a blue square sliding up")
        page.locator("#video-steer").click()
        expect(page.locator("#video-steer-note")).to_contain_text("Steering to")
        expect(stats).to_contain_text("a blue square sliding up")
        shown = frames_seen(page)
        page.wait_for_function(f"window.videoSrcs.length > {shown}")  # still streaming after the steer

        # Stop: the stream ends, no frame comes after it, and the MP4 of what streamed is offered.
        page.locator("#video-stop").click()
        expect(stats).to_contain_text("stopped", timeout=TIMEOUT_MS)
        expect(stats).to_contain_text("MP4 of")
        after_stop = frames_seen(page)
        time.sleep(1.0)
        assert frames_seen(page) == after_stop, "frames kept arriving after Stop"
        assert live_streams == []  # the engine's stream was closed, not just hidden
        fps = float(stats.inner_text().split("fps")[1].split("shown")[0])
        assert fps > 0, stats.inner_text()
        expect(page.locator("#video-clip video")).to_have_attribute("src", re.compile(r"\.mp4"))
        page.screenshot(path=str(tmp_path / "video-tab.png"), full_page=True)  # kept by pytest for a look after a failure
    assert time.perf_counter() - began < 40


def test_closing_the_browser_mid_stream_ends_the_stream(studio_url, live_streams):
    """Gradio closes a disconnected viewer's generator; the tab's `finally` then stops and frees the stream."""
    with video_tab(studio_url) as page:
        page.locator("#video-start").click()
        page.wait_for_function("window.videoSrcs.length >= 3", timeout=TIMEOUT_MS)
        assert len(live_streams) == 1
    deadline = time.monotonic() + 10
    while live_streams and time.monotonic() < deadline:
        time.sleep(0.05)
    assert live_streams == [], "the stream kept running after its browser went away"
