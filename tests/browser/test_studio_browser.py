"""The real studio in headless Chromium: generate, see the gallery, hit a bad input, keep working, read the Models tab.

Uses Debian's Chromium (`apt-get install -y chromium`); Playwright's own browser download is not available here.
"""

import time
from pathlib import Path

import pytest

from tests.browser.chromium import free_port, open_page

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def studio_url(studio_registry):
    from studio.app import StudioSettings, build_ui, launch

    settings = StudioSettings(host="127.0.0.1", port=free_port(), device="cpu")
    studio_registry.engine("tiny-cpu")  # load once up front, so the browser waits only for generation
    demo = build_ui(studio_registry, settings)
    launch(demo, settings, prevent_thread_lock=True, quiet=True)
    yield f"http://127.0.0.1:{settings.port}/"
    demo.close()


@pytest.fixture(scope="module")
def page(studio_url):
    with open_page(studio_url) as page:
        yield page


def natural_sizes(page, selector: str, count: int = 1) -> list[list[int]]:
    """Natural sizes of the matching images, once at least `count` of them have finished loading."""
    loaded = "els => els.length >= n && els.every(e => e.complete && e.naturalWidth > 0)"
    page.wait_for_function(f"n => ({loaded})(Array.from(document.querySelectorAll({selector!r})))", arg=count)
    return page.eval_on_selector_all(selector, "els => els.map(e => [e.naturalWidth, e.naturalHeight])")


def set_number(page, elem_id: str, value: int) -> None:
    box = page.locator(f"#{elem_id} input[type=number]").first
    box.fill(str(value))
    box.press("Tab")


def test_generate_then_bad_input_then_generate_again(page, tmp_path):
    from playwright.sync_api import expect

    start = time.perf_counter()
    page.locator("#prompt textarea").fill("a red circle to the left of a blue square")
    set_number(page, "seed", 1234)
    set_number(page, "batch", 4)
    page.locator("#generate").click()
    expect(page.locator("#info")).to_contain_text("seed 1234 · steps 4 · NFE 8 · per image")  # finished (4 steps, CFG)
    sizes = natural_sizes(page, "#gallery img", count=4)
    assert sizes and all(size == [256, 256] for size in sizes), sizes  # 16 px images shown at 256 px
    page.screenshot(path=str(tmp_path / "image-tab.png"), full_page=True)  # kept by pytest for a look after a failure

    # An empty prompt: the engine's message shows up, nothing breaks.
    page.locator("#prompt textarea").fill("")
    page.locator("#generate").click()
    page.get_by_text("prompt is empty").first.wait_for(state="visible")

    # The studio still serves: a new seed gives a new finished generation.
    page.locator("#prompt textarea").fill("three yellow triangles")
    set_number(page, "seed", 99)
    page.locator("#generate").click()
    expect(page.locator("#info")).to_contain_text("seed 99 · steps 4 · NFE 8 · per image")
    assert natural_sizes(page, "#preview img")[0][1] == 256
    assert time.perf_counter() - start < 60


def test_models_tab_shows_the_card(page):
    from playwright.sync_api import expect

    page.get_by_role("tab", name="Models").click()
    expect(page.locator("#models-table")).to_contain_text("tiny-cpu")
    expect(page.locator("#models-detail")).to_contain_text("flow_matching")
    page.locator("#models-refresh").click()
    expect(page.locator("#models-status")).to_contain_text("tiny-cpu (torch)")  # loaded when the studio started
    expect(page.locator("#models-problems")).to_contain_text("No problems")


def test_compare_tab_shows_both_sides_then_races(page):
    from playwright.sync_api import expect

    page.get_by_role("tab", name="Compare").click()
    page.locator("#compare-prompt").get_by_role("textbox").fill("a red circle to the left of a blue square")
    set_number(page, "compare-seed", 42)
    set_number(page, "compare-teacher-steps", 2)  # few steps keep the test fast; the picker defaults to the card's 4
    set_number(page, "compare-student-steps", 1)
    page.locator("#compare").click()
    expect(page.locator("#compare-teacher-info")).to_contain_text("latency")
    expect(page.locator("#compare-teacher-info")).to_contain_text("NFE 4 · steps 2")
    expect(page.locator("#compare-student-info")).to_contain_text("NFE 2 · steps 1")
    expect(page.locator("#compare-student-info")).to_contain_text("judge (position)")
    expect(page.locator("#compare-summary")).to_contain_text("reads the prompt as position")
    for side in ("teacher", "student"):
        assert natural_sizes(page, f"#compare-{side}-image img") == [[256, 256]]  # 16 px shown at 256 px

    # A bad step count is a message, not a traceback; then the race streams to a finished teacher.
    set_number(page, "compare-teacher-steps", 0)
    page.locator("#compare").click()
    page.get_by_text("teacher steps must be from 1 to 1000, got 0").first.wait_for(state="visible")
    set_number(page, "compare-teacher-steps", 3)
    page.locator("#compare-prompt").get_by_role("textbox").fill("three yellow triangles")
    page.locator("#race").click()
    expect(page.locator("#compare-summary")).to_contain_text("reads the prompt as counting")
    expect(page.locator("#compare-teacher-info")).to_contain_text("NFE 6 · steps 3")
    assert natural_sizes(page, "#compare-teacher-image img") == [[256, 256]]
