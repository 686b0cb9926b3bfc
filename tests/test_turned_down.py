"""The promotion rule, the other way, through the API and the versions table: a retrain on uploads
labelled wrongly on purpose is turned down, the version that served goes on serving, and the new
version is still kept, on disk and on the (local) Hub. On an app of its own (tests/retrain_app.py),
so that it runs beside tests/test_promotion.py's retrain, which is promoted."""
import json

import numpy as np
from conftest import outside_holdout
from retrain_app import REPO, current, upload_labelled, wait_for_hub

from cifar import data


def test_a_retrain_on_wrong_labels_is_turned_down_and_the_serving_version_stays(client, hub, test_split, tmp_path):
    x, y = test_split
    rest = outside_holdout(x)                       # test images the held-out set does not hold
    picks = rest[data.balanced_subset(y[rest], 200, seed=2)]
    # Every one labelled "airplane": one epoch on 2,000 of them cost the shipped model 4.2 held-out
    # points (1,000: 1.5; every image labelled as the next class cost less), measured on the AMX Xeon.
    for n, part in enumerate((picks[:1000], picks[1000:])):   # 1,000 at most in one upload
        summary = upload_labelled(client, x[part], np.zeros(len(part), int), tmp_path / f"wrong{n}.zip")
        assert "**1000 accepted**" in summary.replace(",", ""), summary
    serving = current(client)
    text, comparison, *_ = client.predict(0.98, 1, "", api_name="/retrain")  # as a person would
    assert "Not promoted: held-out accuracy fell from" in text and f"{serving} stays current" in text, text
    before, after = {row[0]: row[1:] for row in comparison["data"]}["held-out accuracy"]
    assert after < before - 0.01, (before, after)      # more than the 1-point tolerance
    rows = client.predict(api_name="/versions")["data"]
    new = text.split("New version **")[1].split("**")[0]
    assert rows[0][0] == new and rows[0][1] != "yes"
    assert current(client) == serving == client.predict(api_name="/monitoring")["version"]
    # Every new version is kept on the Hub, promoted or not; a push by hand of one already there
    # answers with its commit.
    wait_for_hub(client, hub, new)
    assert set(hub.repos[REPO].tags) == {row[0] for row in rows}
    # Kept without a serving runtime: one is made and checked where it first serves (test_runtime.py).
    files = hub.repos[REPO].resolve(new)["files"]
    assert "model.keras" in files and not any(name.startswith("openvino") for name in files), sorted(files)
    assert json.loads(files["metadata.json"][0])["runtime"]["why"].startswith("not converted yet"), files["metadata.json"]
    message = client.predict(new, "", api_name="/push")
    assert message == f"Pushed {new} to {REPO} (commit {hub.repos[REPO].tags[new][:10]}, tag {new})."
