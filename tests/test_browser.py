"""The explorer page in a real browser: Debian chromium driven by Playwright. Writes docs/screenshot.png.

Needs /usr/bin/chromium: run `scripts/install_chromium.sh` (Debian package, no Playwright browser download).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SCREENSHOT = ROOT / "docs" / "screenshot.png"
COLOURED = "#tokens span.dlm-token[style*='background:rgb']"


@pytest.fixture(scope="module")
def url(app_url):
    return app_url


@pytest.fixture(scope="module")
def page(url):
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"{CHROMIUM} is missing: run `scripts/install_chromium.sh` (installs Debian's chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(60_000)
            yield page
        finally:
            browser.close()


def set_number(page, elem_id: str, value) -> None:
    """Type into the number box of a Gradio slider and commit it."""
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Enter")
    box.blur()


def open_page(page, url) -> None:
    page.goto(url)
    page.wait_for_selector("#generate")
    page.wait_for_selector("#sampler input[value='low_confidence']")


def generate(page) -> None:
    page.click("#generate")
    page.wait_for_function("document.querySelector('#stats') && "
                           "document.querySelector('#stats').innerText.includes('tokens/s')")


def test_small_run_colours_tokens_and_replays(page, url):
    open_page(page, url)
    for elem_id in ("gen_length", "steps", "block_length"):
        set_number(page, elem_id, 16)
    generate(page)
    page.wait_for_selector(COLOURED)
    assert page.locator(COLOURED).count() == 16
    assert page.locator("#tokens span.dlm-mask").count() == 0
    set_number(page, "step", 4)  # replay frame 4: four tokens committed, twelve still masked
    page.wait_for_function("document.querySelectorAll('#tokens span.dlm-mask').length === 12")
    assert page.locator(COLOURED).count() == 4


def test_bad_knob_shows_an_error_box(page, url):
    open_page(page, url)
    set_number(page, "gen_length", 30)
    set_number(page, "block_length", 7)
    page.click("#generate")
    page.wait_for_selector("#error .dlm-error")
    assert "block_length" in page.locator("#error").inner_text()


def test_switching_to_ar_updates_the_samplers(page, url):
    open_page(page, url)
    page.locator("#checkpoint input").click()
    page.get_by_role("option", name="ar-tiny").click()
    page.wait_for_function("document.querySelectorAll('#sampler input[type=radio]').length === 1")
    assert page.locator("#sampler input[type=radio]").get_attribute("value") == "ar"
    set_number(page, "gen_length", 16)
    generate(page)
    assert page.locator(COLOURED).count() == 16


def test_readme_screenshot(page, url):
    """A default run (mdlm-tiny, gen length 64, 64 steps), scrubbed back to a step where some tokens are masked."""
    open_page(page, url)
    generate(page)
    page.wait_for_selector("#heatmap .js-plotly-plot")
    assert page.locator(COLOURED).count() == 64
    set_number(page, "step", 48)
    page.wait_for_function("document.querySelectorAll('#tokens span.dlm-mask').length === 16")
    page.wait_for_timeout(500)  # let plotly finish redrawing the heatmap
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOT), full_page=True)
    assert SCREENSHOT.stat().st_size > 20_000
