"""The browser harness the console's tests stand on: headless Chromium at laptop size with a
fresh profile, axe-core that does find problems (so an empty answer means something), and
screenshots the run keeps."""

from __future__ import annotations

from pathlib import Path

import pytest
from selenium.webdriver.remote.webdriver import WebDriver

from tests.fixtures import browser as browser_fixture
from tests.fixtures.browser import (
    SCREENSHOTS,
    WINDOW,
    Screenshot,
    ServePages,
    axe_violations,
    describe_violations,
)

CLEAN = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>A clean page</title></head>
<body><main>
  <h1>Queues</h1>
  <p style="color:#1a1a1a;background:#ffffff">Everything here is readable.</p>
  <form><label for="q">Callback id</label> <input id="q" name="q"> <button>Look up</button></form>
</main></body></html>"""

BROKEN = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>A broken page</title></head>
<body><main>
  <h1>Queues</h1>
  <p id="faint" style="color:#c8c8c8;background:#ffffff">Hard to read, light grey on white.</p>
  <form><input id="nameless" name="q"> <button>Look up</button></form>
</main></body></html>"""


def test_axe_reports_an_unlabelled_input_and_low_contrast_text(
    browser: WebDriver, serve_pages: ServePages
) -> None:
    base = serve_pages({"/broken": BROKEN})
    browser.get(base + "/broken")
    found = {v["id"]: v for v in axe_violations(browser)}
    assert "label" in found, describe_violations(list(found.values()))
    assert found["label"]["impact"] == "critical"
    assert [n["target"] for n in found["label"]["nodes"]] == [["#nameless"]]
    assert "color-contrast" in found, describe_violations(list(found.values()))
    assert found["color-contrast"]["impact"] == "serious"
    assert [n["target"] for n in found["color-contrast"]["nodes"]] == [["#faint"]]
    assert "#nameless" in describe_violations(list(found.values()))


def test_axe_finds_nothing_on_a_clean_page(browser: WebDriver, serve_pages: ServePages) -> None:
    base = serve_pages({"/clean": CLEAN})
    browser.get(base + "/clean")
    everything = axe_violations(browser, impacts=("minor", "moderate", "serious", "critical"))
    assert everything == [], describe_violations(everything)


def test_the_browser_is_laptop_sized_with_a_profile_of_this_test(
    browser: WebDriver, serve_pages: ServePages, tmp_path: Path
) -> None:
    base = serve_pages({"/clean": CLEAN})
    browser.get(base + "/clean")
    # The window is the laptop's screen; the page gets its width and what the (emulated)
    # browser bars leave of its height, as on a real laptop.
    size = browser.get_window_size()
    assert (size["width"], size["height"]) == WINDOW
    width, height = browser.execute_script("return [window.innerWidth, window.innerHeight]")
    assert width == WINDOW[0]
    assert 560 <= height <= WINDOW[1]
    profile = Path(browser.capabilities["chrome"]["userDataDir"])
    assert profile.is_relative_to(tmp_path)


def test_a_screenshot_is_kept_where_the_run_keeps_them(
    browser: WebDriver, serve_pages: ServePages, screenshot: Screenshot
) -> None:
    base = serve_pages({"/clean": CLEAN})
    browser.get(base + "/clean")
    path = screenshot("clean")
    assert path.parent == SCREENSHOTS
    assert path.name == "test_a_screenshot_is_kept_where_the_run_keeps_them-clean.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size > 1000


def test_a_browser_that_cannot_start_fails_the_test_never_skips_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(browser_fixture, "CHROMEDRIVER", str(tmp_path / "no-chromedriver"))
    with pytest.raises(pytest.fail.Exception, match="make deps"):
        browser_fixture.start_chromium(tmp_path / "profile", tmp_path / "driver.log")
