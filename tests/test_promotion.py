"""The promotion rule, the first way, through the API and the versions table: a retrain on rightly
labelled uploads is promoted, serves and is pushed to the (local) Hub without being asked; then the
metrics compare it with the shipped version and a rollback brings that back. While the retrain runs,
the one-retrain-at-a-time lock refuses a second, and a browser page opened meanwhile follows it in
the Retrain tab (no retrain of their own). The other way, a retrain turned down:
tests/test_turned_down.py, on an app of its own (tests/retrain_app.py), so the two retrains run side
by side in the suite."""
import re
import time
from pathlib import Path

import numpy as np
import pytest
from chromium import open_page, shot
from retrain_app import REPO, current, upload_labelled, wait_for_hub

from cifar import data


@pytest.fixture(scope="module")
def right_retrain(client, tmp_path_factory) -> dict:
    """One retrain on rightly labelled uploads, started through the API: the next three tests read
    it while it runs (the lock, a page following it) and once it has ended (its verdict)."""
    x, y = data.load_npz(data.replay_path())        # training images the repository ships, right labels
    picks = data.balanced_subset(y, 31, seed=1)                        # 300 labelled, 10 not
    labels = np.where(np.arange(len(picks)) % 31 == 0, -1, y[picks])
    summary = upload_labelled(client, x[picks], labels, tmp_path_factory.mktemp("right") / "right.zip")
    queue = client.predict(3, "", "", api_name="/review_queue")      # a person labels two unlabeled ones
    client.predict(queue[0]["id"], queue[0]["guess"], "", api_name="/label")
    client.predict(queue[1]["id"], "none", "", api_name="/label")       # not one of the ten: left out
    before = current(client)
    return {"summary": summary, "before": before, "job": client.predict(0.98, 1, "", api_name="/retrain_start")}


def test_while_a_retrain_runs_a_second_one_is_refused_naming_it(client, right_retrain):
    assert "**310 accepted** (300 labeled, 10 unlabeled)" in right_retrain["summary"], right_retrain["summary"]
    job = right_retrain["job"]
    with pytest.raises(Exception, match=f"already running .*job {job['id']}"):
        client.predict(0.98, 1, "", api_name="/retrain")
    with pytest.raises(Exception, match="already running"):
        client.predict(0.98, 1, "", api_name="/retrain_start")
    assert client.predict(job["id"], api_name="/retrain_status")["state"] in ("queued", "running")


def test_the_retrain_tab_of_a_page_opened_meanwhile_follows_the_job_to_its_verdict(client, right_retrain):
    """A page opened while a retrain started elsewhere runs shows it in the Retrain tab, through a
    reload, with its progress, then its verdict and new version, without a click."""
    job = right_retrain["job"]
    with open_page(client.src) as page:
        page.reload(wait_until="load")
        page.get_by_role("tab", name="Retrain").click()
        status = page.locator("#retrain-status")
        page.wait_for_function(f"() => document.getElementById('retrain-status').innerText.includes('{job['id']}')"
                               " || /Promoted|Not promoted/.test(document.getElementById('retrain-status').innerText)",
                               timeout=60_000)
        if "Retraining" in status.inner_text():   # caught while it ran (it usually is): progress in words
            assert re.search(r"Retraining \(\d+%\)", status.inner_text())
        # 1 minute on an AMX Xeon beside the suite; several on a 2-core AVX2-only EPYC.
        page.wait_for_function("() => /Promoted|Not promoted/.test(document.getElementById('retrain-status').innerText)",
                               timeout=1_200_000)
        version = re.search(r"New version (\d{8}T\d{6}Z-retrain)", status.inner_text()).group(1)
        page.wait_for_function(f"() => document.body.innerText.includes('{version}')", timeout=30_000)
        result = client.predict(job["id"], api_name="/retrain_status")["result"]
        assert result["version"] == version
        # The before/after table: accuracies in percent, F1 as a fraction (the API's rows stay numbers).
        table = page.locator("#retrain-before-after")
        page.wait_for_function("() => document.getElementById('retrain-before-after').innerText.includes('%')",
                               timeout=30_000)
        cells = [line.strip() for line in table.inner_text().splitlines() if line.strip()]  # one cell a line
        before, after = result["before"], result["after"]
        row = lambda metric: cells[cells.index(metric) + 1:cells.index(metric) + 3]
        assert row("held-out accuracy") == [f"{before['accuracy']:.2%}", f"{after['accuracy']:.2%}"], cells
        assert row("held-out macro F1") == [f"{before['macro']['f1']:.4f}", f"{after['macro']['f1']:.4f}"], cells
        cells = page.locator("#versions-table").inner_text().split(version, 1)[1].split()[:6]  # its row's next cells
        assert f"{result['after']['accuracy']:.2%}" in cells, cells          # its accuracy, in percent
        shot(page, "retrain_job")


def test_the_retrain_on_right_labels_is_promoted_serves_and_is_pushed(client, hub, right_retrain):
    job, before = right_retrain["job"], right_retrain["before"]
    deadline = time.time() + 1800  # 2 minutes on an AMX Xeon, 8 on a 2-core AVX2-only EPYC beside the suite
    while (status := client.predict(job["id"], api_name="/retrain_status"))["state"] in ("queued", "running"):
        assert time.time() < deadline, status
        time.sleep(1)
    result = status["result"]
    assert status["state"] == "done" and result["promoted"], result
    assert result["after"]["accuracy"] >= result["before"]["accuracy"] - 0.01
    assert result["uploads"] == 309 and result["reviewed"] == 1 and result["labeled"] == 301
    rows = client.predict(api_name="/versions")["data"]
    assert rows[0][0] == result["version"] != before and rows[0][1] == "yes"
    assert current(client) == result["version"] == client.predict(api_name="/monitoring")["version"]
    # Pushed without being asked, as a tagged commit with its card, and recorded as current there.
    status = wait_for_hub(client, hub, result["version"])
    repo = hub.repos[REPO]
    assert "README.md" in repo.resolve(result["version"])["files"] and status["last_error"] is None
    deadline = time.time() + 120
    while client.predict(api_name="/monitoring")["hub"]["current_on_hub"] != result["version"]:
        assert time.time() < deadline
        time.sleep(0.5)


def test_metrics_compare_two_versions_and_rollback_to_the_previous_one(client):
    rows = client.predict(api_name="/versions")["data"]  # newest first: promoted, shipped
    assert len(rows) == 2 and rows[0][1] == "yes"
    promoted, shipped = (row[0] for row in rows)
    summary, scores, side, *plots = client.predict(promoted, shipped, api_name="/metrics")
    assert promoted in summary and len(scores["data"]) == 11 and side["data"][0][0] == "accuracy"
    accuracy = {row[0]: row[1:] for row in side["data"]}["accuracy"]
    assert all(0.85 < float(v) < 1 for v in accuracy[:2]), accuracy   # both versions, measured, side by side
    assert len(plots) >= 2 and all(Path(p).stat().st_size > 5_000 for p in plots if isinstance(p, str)), plots
    # "" rolls back to the version that served before the current one.
    message, *_ = client.predict("", "", api_name="/rollback")
    assert shipped in message
    assert current(client) == shipped == client.predict(api_name="/monitoring")["version"]
