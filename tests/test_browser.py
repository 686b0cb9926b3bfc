"""A real headless Chromium opens the app, visits every tab, predicts an example, saves screenshots."""
import shutil

import pytest

from conftest import ARTIFACTS

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def page(app_server):
    from playwright.sync_api import sync_playwright

    if not shutil.which("chromium"):
        pytest.fail("Debian's chromium is not installed (apt-get install chromium)")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.goto(app_server.url, wait_until="networkidle")
        yield page
        browser.close()


def test_predict_an_example_in_the_browser(page):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.get_by_role("tab", name="Predict").click()
    # The examples gallery: clicking the cat example loads it into the image input.
    page.locator(".gallery-item, button.gallery-item, [data-testid='examples'] button").nth(3).click()
    page.get_by_role("button", name="Classify", exact=True).click()
    label = page.locator("[data-testid='label-output-value'], .output-class").first
    label.wait_for(timeout=60_000)
    page.wait_for_function("() => document.body.innerText.includes('confident') || "
                           "document.body.innerText.includes('Not sure')", timeout=60_000)
    assert "cat" in label.inner_text().lower()
    page.screenshot(path=str(ARTIFACTS / "predict.png"), full_page=True)


@pytest.mark.parametrize("tab, expected", [
    ("Bulk upload", "Up to 1,000 images"),
    ("Retrain", "Retrain on uploads"),
    ("Metrics", "Compare with"),
    ("Monitoring", "Load test"),
])
def test_every_tab_opens(page, tab, expected):
    page.get_by_role("tab", name=tab).click()
    page.get_by_text(expected).first.wait_for(timeout=20_000)
    if tab == "Metrics":
        page.get_by_role("button", name="Show").click()
        page.wait_for_function("() => document.body.innerText.includes('accuracy')", timeout=60_000)
    if tab == "Monitoring":
        page.wait_for_function("() => document.body.innerText.includes('Current version')", timeout=30_000)
    page.screenshot(path=str(ARTIFACTS / f"{tab.lower().replace(' ', '_')}.png"), full_page=True)
