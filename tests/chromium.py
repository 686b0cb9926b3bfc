"""Debian's headless Chromium, driven by Playwright as a person uses the app: one page on an app's
URL, the Predict tab's bars as drawn, and screenshots of what it shows (tests/artifacts;
assets/screenshots/ holds the README's copies)."""
import re
import shutil
from contextlib import contextmanager

import pytest
from conftest import ARTIFACTS

# Debian's chromium where installed (tests/run.sh installs it as root); else Playwright's own.
CHROMIUM = shutil.which("chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]
BAR = "#all-classes svg path[aria-roledescription='bar']"  # the Predict tab's ten bars


@contextmanager
def open_page(url: str):
    """A fresh page showing the app at `url`, once its tabs are drawn."""
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        try:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        except Exception as exc:  # neither browser: say how to get one
            pytest.fail(f"no headless Chromium ({exc.__class__.__name__}): run bash tests/run.sh, which installs "
                        "Debian's chromium as root, or `python -m playwright install chromium`")
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(url, wait_until="load")
            page.get_by_role("tab", name="Predict").wait_for(timeout=60_000)
            yield page
        finally:
            browser.close()


def shot(page, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def bar_values(page) -> dict[str, float]:
    """The bar chart's data as the page draws it: each bar's aria-label holds class and value."""
    values = {}
    for label in page.locator(BAR).evaluate_all("bars => bars.map(b => b.getAttribute('aria-label'))"):
        match = re.match(r"class: (\w+); confidence: ([\d.e-]+)", label or "")
        if match:
            values[match.group(1)] = float(match.group(2))
    return values


def wait_for_bars(page, top: str) -> dict[str, float]:
    """The ten bars once drawn with `top` the tallest (its confidence depends on how many test-time
    views served it: fewer on a busy CPU)."""
    page.wait_for_function(
        f"""() => {{
            const bars = [...document.querySelectorAll("{BAR}")]
                .map(b => /class: (\\w+); confidence: ([\\d.e-]+)/.exec(b.getAttribute('aria-label') || ''))
                .filter(Boolean);
            return bars.length === 10 && bars.every(b => b[1] === '{top}' || +b[2] < +bars.find(t => t[1] === '{top}')?.[2]);
        }}""", timeout=60_000)
    return bar_values(page)
