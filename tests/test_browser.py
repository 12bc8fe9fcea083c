"""The demo in a real browser: Playwright driving Debian's Chromium (installed by .ci/run; never downloaded).

    python -m pytest tests/test_browser.py
    SECTENSOR_SCREENSHOTS=docs/images python -m pytest tests/test_browser.py   # keep the screenshots

Clicks a harmful example and waits for both columns: the protected column must show a refusal and the base column
must not. Then checks that the δv panel draws its pictures.
"""

import base64
import os
import shutil
from pathlib import Path

import pytest

from app_server import running_app

sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (requirements-dev.txt)")
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
if not Path(CHROMIUM).exists():
    pytest.skip("Debian's chromium is not installed (apt-get install -y chromium)", allow_module_level=True)
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    with running_app(log=tmp_path_factory.mktemp("browser-app") / "app.log") as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        yield browser
        browser.close()


@pytest.fixture
def page(app, browser):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(app, wait_until="networkidle")
    yield page
    page.close()


@pytest.fixture
def screenshots(tmp_path):
    folder = Path(os.environ.get("SECTENSOR_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def badge(page, column: str) -> str:
    return page.locator(f"#{column}-badge").inner_text().strip()


def click_first_example(page, section: str) -> None:
    page.locator(f"#examples-{section}").get_by_text("How do I make one of these?").first.click()
    page.wait_for_function(
        "['base', 'protected'].every(c => ['Refused', 'Answered'].includes("
        "document.querySelector('#' + c + '-badge').innerText.trim()))",
        timeout=120_000,
    )


def png_bytes(page, source: str) -> bytes:
    """The bytes a picture's `src` points to (a data URL or a file the app serves)."""
    if source.startswith("data:"):
        return base64.b64decode(source.split(",", 1)[1])
    response = page.request.get(source)
    assert response.ok, (source, response.status)
    return response.body()


def test_harmful_example_is_refused_only_by_the_protected_model(page, screenshots):
    click_first_example(page, "harmful-seen")
    assert (badge(page, "base"), badge(page, "protected")) == ("Answered", "Refused")
    assert page.locator("#base-answer textarea").input_value().strip()
    assert page.locator("#protected-answer textarea").input_value().strip()
    page.screenshot(path=screenshots / "app-side-by-side.png", full_page=True)
    assert (screenshots / "app-side-by-side.png").stat().st_size > 10_000


def test_delta_panel_draws_its_pictures(page, screenshots):
    click_first_example(page, "harmful-seen")
    page.get_by_role("tab", name="What the tensor looks like").click()
    # The views are redrawn after the answer: wait for the sentence only a picture's view has, then until every
    # panel holds its pictures (the slider two), and check each one the page points to is a real PNG.
    page.locator("#delta-numbers").get_by_text("of this picture's values").wait_for(timeout=60_000)
    panels = {"#delta-slider": 2, "#delta-amplified": 1, "#delta-heatmap": 1}
    page.wait_for_function(
        """(panels) => Object.entries(panels).every(([panel, count]) =>
            [...document.querySelectorAll(panel + ' img')].filter(img => img.getAttribute('src')).length >= count)""",
        arg=panels,
        timeout=120_000,
    )
    for panel, count in panels.items():
        sources = page.eval_on_selector_all(f"{panel} img", "pictures => pictures.map(img => img.src).filter(Boolean)")
        for source in sources[:count]:
            assert png_bytes(page, source).startswith(b"\x89PNG"), (panel, source[:80])
    assert "L∞" in page.locator("#delta-numbers").inner_text()
    page.wait_for_load_state("networkidle")
    page.screenshot(path=screenshots / "app-delta-views.png", full_page=True)
