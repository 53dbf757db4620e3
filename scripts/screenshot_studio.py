"""Screenshots of the studio on the shipped checkpoints for the README: docs/screenshots/image-tab.png,
docs/screenshots/text-tab.png (the text teacher's canvas, tokens coloured by the step that committed them) and
docs/screenshots/video-tab.png (a clip streamed live by the distilled video student).

Needs Debian's chromium (see README, Development). Runs on the CPU in about half a minute.
"""

from pathlib import Path

from playwright.sync_api import expect, sync_playwright

from studio.app import StudioSettings, build_registry, build_ui, launch
from tests.browser.chromium import CHROMIUM, CHROMIUM_ARGS, free_port

OUT = Path(__file__).resolve().parent.parent / "docs" / "screenshots" / "image-tab.png"
TEXT_OUT = OUT.with_name("text-tab.png")
VIDEO_OUT = OUT.with_name("video-tab.png")
port = free_port()
settings = StudioSettings(port=port, device="cpu")
launch(build_ui(build_registry(settings), settings), settings, prevent_thread_lock=True, quiet=True)
with sync_playwright() as p:
    browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(f"http://127.0.0.1:{port}/")
    page.locator("#prompt textarea").fill("a purple diamond above a green ball")
    page.locator("#batch input[type=number]").fill("4")
    page.locator("#batch input[type=number]").press("Enter")
    page.locator("#generate").click()
    expect(page.locator("#info")).to_contain_text("per image", timeout=120_000)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(OUT), full_page=True)

    from trainer.worlds.textworld import eval_examples

    page.get_by_role("tab", name="Text").click()
    page.locator("#text-model input").first.click()
    page.get_by_role("option", name="text-teacher").first.click()
    problem = next(e for e in eval_examples(16) if e.family == "arithmetic")
    page.locator("#text-prompt textarea").fill(problem.prompt)
    page.locator("#text-generate").click()
    expect(page.locator("#text-stats")).to_contain_text("NFE 48", timeout=240_000)
    page.screenshot(path=str(TEXT_OUT), full_page=True)

    page.get_by_role("tab", name="Video").click()
    page.locator("#video-prompt textarea").fill("a red ball bouncing to the right and a blue square sliding up")
    page.locator("#video-steps input[type=number]").fill("2")
    page.locator("#video-frames input[type=number]").fill("48")
    page.locator("#video-start").click()
    expect(page.locator("#video-stats")).to_contain_text("MP4 of 48 frames", timeout=240_000)
    page.screenshot(path=str(VIDEO_OUT), full_page=True)
    browser.close()
print(f"wrote {OUT}, {TEXT_OUT} and {VIDEO_OUT}")
