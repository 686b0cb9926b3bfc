"""A real headless Chromium uses the app as a person does, on its own fresh app: it predicts an
example and an uploaded picture and reads the ten bars, opens every tab and checks what each
shows (not only that it exists), and saves a screenshot of each tab (assets/screenshots/ holds
the README's copies)."""
import json
import re
import time

import pytest
from chromium import open_page, shot, wait_for_bars
from conftest import ROOT, AppProcess
from gradio_client import Client


@pytest.fixture(scope="module")
def browser_app(tmp_path_factory):
    # Empty store, counters at zero; Monitoring's timer slowed to 10 minutes, so what it shows when
    # opened can only come from opening it. 6 views: what a person sees by default on this CPU.
    app = AppProcess(tmp_path_factory.mktemp("browser") / "home",
                     env={"CIFAR_MONITORING_REFRESH_S": "600", "CIFAR_TTA": "2"})
    yield app
    app.stop()


@pytest.fixture(scope="module")
def page(browser_app):
    with open_page(browser_app.url) as page:
        yield page


def choose_example(page, n: int) -> None:
    """Click the n-th example, as a person would, until it shows in the input: on a busy CPU a click
    made before the page has wired its handlers is lost, and a Classify then would have no image."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    example = page.locator(".gallery-item, button.gallery-item, [data-testid='examples'] button").nth(n)
    for _ in range(6):
        example.click()
        try:
            page.locator("#query-image img").first.wait_for(timeout=10_000)
            return
        except PlaywrightTimeout:
            continue
    raise AssertionError(f"example {n} never showed in the input")


def test_classify_an_example_draws_ten_bars(page):
    page.get_by_role("tab", name="Predict").click()
    choose_example(page, 3)  # the cat
    page.get_by_role("button", name="Classify", exact=True).click()
    values = wait_for_bars(page, "cat")
    assert len(values) == 10 and max(values, key=values.get) == "cat"
    assert sum(values.values()) == pytest.approx(1.0, abs=0.01)           # all ten classes, not the top three
    label = page.locator("[data-testid='label-output-value'], .output-class").first
    assert "cat" in label.inner_text().lower()
    shown = int(re.search(r"cat \((\d+)% confident\)", page.locator("body").inner_text()).group(1))
    assert shown == round(100 * values["cat"])                             # the note and the bar agree
    shot(page, "predict")


def test_uploading_a_picture_classifies_it_and_redraws_the_bars(page):
    page.get_by_role("tab", name="Predict").click()
    page.locator("input[type='file']").first.set_input_files(str(ROOT / "assets" / "examples" / "ship.png"))
    values = wait_for_bars(page, "ship")
    assert len(values) == 10 and max(values, key=values.get) == "ship"


def test_metrics_shows_the_current_version_when_opened(page):
    page.get_by_role("tab", name="Metrics").click()
    page.wait_for_function("() => /calibration error \\(ECE, 15 bins\\)/.test(document.body.innerText)",
                           timeout=60_000)
    text = page.locator("body").inner_text()
    assert re.search(r"\d{8}T\d{6}Z-scratch: accuracy 9\d\.\d\d%", text)
    assert re.search(r"ECE, 15 bins\) \d\.\d\d%", text)
    assert not re.search(r"\d", page.locator("#comparison").inner_text())    # nothing compared by default
    reliability = page.locator("#reliability img")
    reliability.wait_for(timeout=30_000)
    assert reliability.evaluate("img => img.complete && img.naturalWidth") > 100
    shot(page, "metrics")


def test_bulk_upload_shows_no_empty_frame_then_the_class_plot(page):
    page.get_by_role("tab", name="Bulk upload").click()
    panel = page.locator("[role='tabpanel']:visible")
    panel.get_by_text("Up to 1,000 images").wait_for(timeout=20_000)
    assert panel.locator("[data-testid='image'], img").count() == 0         # empty store: no empty frame
    files = sorted(str(p) for p in (ROOT / "assets" / "examples").glob("*.png"))
    panel.locator("input[type='file']").first.set_input_files(files)
    panel.get_by_role("button", name="Upload", exact=True).click()
    page.wait_for_function("() => document.body.innerText.includes('10 accepted')", timeout=60_000)
    assert "Estimated accuracy of the current model on these 10 images" in panel.inner_text()
    panel.locator("img").first.wait_for(timeout=30_000)
    assert panel.locator("img").first.evaluate("img => img.naturalWidth") > 100
    shot(page, "bulk_upload")


def test_retrain_tab_states_the_rule(page):
    page.get_by_role("tab", name="Retrain").click()
    page.get_by_role("button", name="Retrain on uploads").wait_for(timeout=20_000)
    assert "2,000 held-out test images" in page.locator("body").inner_text()
    shot(page, "retrain")


def test_monitoring_counts_browser_predictions_the_moment_it_opens(page, browser_app):
    page.get_by_role("tab", name="Monitoring").click()
    page.wait_for_function("() => /Estimated accuracy on the last \\d+ predictions/.test(document.body.innerText)",
                           timeout=30_000)
    counted = lambda: int(re.search(r"Estimated accuracy on the last (\d+) predictions",
                                    page.locator("body").inner_text()).group(1))
    before = counted()
    assert before >= 2                       # the example and the uploaded picture, made in this browser
    assert page.locator("svg path[aria-roledescription='line mark']").count() >= 5   # the plots are drawn
    # What serves the network, as a person reads it, and how many predictions had all 6 views.
    # What serves depends on the CPU (the runtime that passed its check here); the page says which,
    # in the words the API gives.
    text = page.locator("body").inner_text()
    served = Client(browser_app.url, verbose=False).predict(api_name="/monitoring")["runtime"]
    assert served.startswith(("OpenVINO int8 (", "OpenVINO float (", "Keras: ")) and f"served by {served}" in text, text[:2000]
    assert re.search(r"test-time views by queue depth: 6 views [1-9]", text)
    # Predict in the browser again, come back: opening the tab refreshes it (no reload, no timer).
    page.get_by_role("tab", name="Predict").click()
    page.get_by_role("button", name="Classify", exact=True).click()
    api = Client(browser_app.url, verbose=False)
    for _ in range(600):  # the app says when it has counted the prediction (within a minute)
        if api.predict(api_name="/monitoring")["predictions"] > before:
            break
        time.sleep(0.1)
    page.get_by_role("tab", name="Monitoring").click()
    page.wait_for_function(f"() => (document.body.innerText.match(/Estimated accuracy on the last (\\d+) predictions/)"
                           f" || [0, 0])[1] > {before}", timeout=30_000)
    shot(page, "monitoring")


def test_review_three_by_click_and_one_by_key(page, tmp_path):
    from PIL import Image

    from cifar import data

    x, _ = data.holdout()
    files = []
    for i in range(8):                                    # unlabeled: plain names
        files.append(str(tmp_path / f"photo{i}.png"))
        Image.fromarray(x[3 + 97 * i]).save(files[-1])
    page.get_by_role("tab", name="Bulk upload").click()
    panel = page.locator("[role='tabpanel']:visible")
    panel.locator("input[type='file']").first.set_input_files(files)
    panel.get_by_role("button", name="Upload", exact=True).click()
    page.wait_for_function("() => document.body.innerText.includes('8 accepted')", timeout=60_000)

    page.get_by_role("tab", name="Review").click()
    progress = page.locator("#review-progress")
    page.wait_for_function("() => /0 of 8\\b/.test(document.getElementById('review-progress').innerText)",
                           timeout=60_000)
    page.wait_for_function("() => (document.querySelector('#review-image img') || {}).naturalWidth >= 128",
                           timeout=30_000)                  # shown big enough to judge
    for done, button in enumerate(["label-3", "label-5", "review-none"], start=1):
        page.locator(f"#{button}").click()
        page.wait_for_function(f"() => document.getElementById('review-progress').innerText.includes('{done} of 8')",
                               timeout=30_000)
    page.locator("body").click(position={"x": 5, "y": 5})   # focus off any input: the keys go to the page
    page.keyboard.press("8")                                # ship
    page.wait_for_function("() => document.getElementById('review-progress').innerText.includes('4 of 8')",
                           timeout=30_000)
    assert "labeled ship" in page.locator("#review-message").inner_text()
    page.keyboard.press("u")                                # undo the last one
    page.wait_for_function("() => document.getElementById('review-progress').innerText.includes('3 of 8')",
                           timeout=30_000)
    assert "3 of 8" in progress.inner_text()
    shown = lambda: page.locator("#review-image img").get_attribute("src")
    skipped = shown()
    page.keyboard.press("s")                                # skip: another picture, nothing labeled
    page.wait_for_function(f"() => (document.querySelector('#review-image img') || {{}}).src !== {json.dumps(skipped)}"
                           f" && !(document.querySelector('#review-image img') || {{}}).src.endsWith('undefined')",
                           timeout=30_000)
    assert "3 of 8" in progress.inner_text()
    page.keyboard.press("n")                                # none of the ten classes
    page.wait_for_function("() => document.getElementById('review-progress').innerText.includes('4 of 8')",
                           timeout=30_000)
    assert "marked as none of the ten classes" in page.locator("#review-message").inner_text()
    assert shown() != skipped                               # the skipped one is not asked again at once
    shot(page, "review")
