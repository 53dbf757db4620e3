"""What the browser tests share: Debian's Chromium (Playwright's own download cannot work here), its
headless flags, a free port, and a page opened on a studio URL."""

import contextlib
from pathlib import Path

import pytest

from bench.common import free_port  # noqa: F401 - the browser tests take it from here

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_MS = 20_000


@contextlib.contextmanager
def open_page(url: str, width: int = 1280, height: int = 900, ready: str = "#generate"):
    """A Chromium page on `url`, once the element `ready` is there; closed afterwards."""
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} is missing: the browser tests need Debian's Chromium. Install it with `apt-get install -y chromium`."
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": width, "height": height})
        page.set_default_timeout(TIMEOUT_MS)
        page.goto(url)
        page.locator(ready).wait_for()
        try:
            yield page
        finally:
            browser.close()
