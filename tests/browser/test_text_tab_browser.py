"""The Text tab in headless Chromium: the canvas fills in live, finishes with no masks, stats show NFE; bad input
is a message and the tab keeps working.

Uses Debian's Chromium (`apt-get install -y chromium`), like test_studio_browser.py.
"""

import re
import time

import pytest

from tests.browser.chromium import TIMEOUT_MS, free_port, open_page
from tests.browser.test_studio_browser import set_number

pytestmark = [pytest.mark.browser, pytest.mark.usefixtures("torch_one_thread")]
STEP_DELAY_S = 0.05  # the tiny model decodes a step in ~1 ms: slow the stream so every step reaches the page

# Records, from the page, whether a canvas was ever shown part-way: some tokens committed, some still masked.
WATCH_CANVAS = """() => {
  window.sawPartialCanvas = false;
  const check = () => document.querySelectorAll('#text-canvas .text-canvas').forEach(c => {
    const masked = +c.dataset.masked, tokens = +c.dataset.tokens;
    if (masked > 0 && masked < tokens) window.sawPartialCanvas = true;
  });
  new MutationObserver(check).observe(document.body, {subtree: true, childList: true, attributes: true});
}"""


@pytest.fixture(scope="module")
def studio_url(text_registry):
    from studio.app import StudioSettings, build_ui, launch

    settings = StudioSettings(host="127.0.0.1", port=free_port(), device="cpu", train_tab=False)
    for model_id in ("tiny-text", "tiny-text-cd4lm"):  # load up front, so the browser waits only for decoding
        engine = text_registry.engine(model_id)
        stream = engine.stream

        def slowed(request, stream=stream):
            for result in stream(request):
                time.sleep(STEP_DELAY_S)
                yield result

        engine.stream = slowed
    demo = build_ui(text_registry, settings)
    launch(demo, settings, prevent_thread_lock=True, quiet=True)
    yield f"http://127.0.0.1:{settings.port}/"
    demo.close()
    for model_id in ("tiny-text", "tiny-text-cd4lm"):
        del text_registry.engine(model_id).stream  # the instance attribute goes; the class's method is back


@pytest.fixture(scope="module")
def page(studio_url):
    with open_page(studio_url, height=1000) as page:
        page.get_by_role("tab", name="Text").click()
        page.locator("#text-generate").wait_for()
        yield page


def generate(page) -> None:
    page.evaluate(WATCH_CANVAS)
    page.locator("#text-generate").click()


def test_canvas_fills_in_live_then_bad_input_then_generates_again(page, tmp_path):
    from playwright.sync_api import expect

    start = time.perf_counter()
    # The student is picked by default, with its card's confidence-threshold decoder.
    expect(page.locator("#text-model input")).to_have_value(re.compile("tiny-text-cd4lm · student"))
    expect(page.locator("#text-threshold")).to_be_visible()
    page.locator("#text-prompt textarea").fill("Sort these numbers from smallest to largest: 41, 7, 23, 15")
    set_number(page, "text-gen-length", 16)
    set_number(page, "text-block-length", 8)
    set_number(page, "text-seed", 7)
    generate(page)
    expect(page.locator("#text-stats")).to_contain_text("NFE", timeout=TIMEOUT_MS)
    expect(page.locator("#text-stats")).to_contain_text("tokens/s")
    canvas = page.locator("#text-canvas .text-canvas")
    expect(canvas).to_have_attribute("data-masked", "0")  # finished: nothing left masked
    assert page.locator("#text-canvas .tok").count() == 16
    assert page.locator("#text-canvas .tok.masked").count() == 0
    assert page.evaluate("window.sawPartialCanvas"), "the canvas never showed a part-masked state while decoding"
    expect(page.locator("#text-stats")).to_contain_text("threshold 0.5, blocks of 8")

    # A block length that does not divide the generation length: the message shows, nothing breaks.
    set_number(page, "text-block-length", 5)
    page.locator("#text-generate").click()
    page.get_by_text("block length 5 does not divide the generation length 16").first.wait_for(state="visible")

    # A threshold outside (0, 1]: the same.
    set_number(page, "text-block-length", 8)
    set_number(page, "text-threshold", 0)
    page.locator("#text-generate").click()
    page.get_by_text("confidence threshold must be in (0, 1], got 0").first.wait_for(state="visible")

    # The tab still works: the teacher with 8 fixed steps (two tokens a step) fills the canvas again.
    page.locator("#text-model input").click()
    page.get_by_role("option", name=re.compile("tiny-text · teacher")).click()
    expect(page.locator("#text-steps")).to_be_visible()  # the teacher's card decodes with fixed steps
    set_number(page, "text-gen-length", 16)
    set_number(page, "text-block-length", 8)
    set_number(page, "text-steps", 8)
    generate(page)
    expect(page.locator("#text-stats")).to_contain_text("NFE 8 · steps 8")
    expect(canvas).to_have_attribute("data-masked", "0")
    assert page.evaluate("window.sawPartialCanvas")
    page.screenshot(path=str(tmp_path / "text-tab.png"), full_page=True)  # kept by pytest for a look after a failure
    assert time.perf_counter() - start < 40
