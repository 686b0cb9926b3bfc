"""The app the promotion rule is tested on, both ways (tests/test_promotion.py: a retrain on right
labels is promoted; tests/test_turned_down.py: one on wrong labels is not): a real app on the
shipped model that pushes every new version to a local Hub, one per module (pytest plugin: its
module-scoped fixtures are made again for each module that asks), and the API calls both make."""
import io
import time
import zipfile

import pytest
from conftest import AppProcess
from gradio_client import Client, handle_file
from hub_server import HubServer
from PIL import Image

from cifar import CLASSES

REPO, TOKEN = "team/cifar", "hf_promotiontesttoken123456"


@pytest.fixture(scope="module")
def hub():
    server = HubServer(token=TOKEN).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def client(tmp_path_factory, hub):
    home = tmp_path_factory.mktemp("retrain-app") / "home"
    # CIFAR_RETRAIN_S: every planned training step runs on any CPU (a slow one would compress them
    # into the 3-minute budget, and 1 step on wrong labels hurts too little to be turned down).
    app = AppProcess(home, env={"HF_REPO_ID": REPO, "HF_TOKEN": TOKEN, "HF_ENDPOINT": hub.url, "HF_DATASET_ID": "off",
                                "HF_HUB_DISABLE_XET": "1", "HF_HOME": str(home.parent / "hf"), "CIFAR_RETRAIN_S": "3600"})
    yield Client(app.url, verbose=False)
    app.stop()


def wait_for_hub(client, hub, version: str) -> dict:
    """The Hub state Monitoring shows, once `version` is tagged on the Hub and nothing is pending."""
    deadline = time.time() + 300
    while True:
        status = client.predict(api_name="/monitoring")["hub"]
        if version in getattr(hub.repos.get(REPO), "tags", {}) and status["pending_uploads"] == 0:
            return status
        assert time.time() < deadline, status
        time.sleep(0.5)


def upload_labelled(client, x, labels, path) -> str:
    """One zip, images in class folders (so labelled; label -1: a plain name, unlabeled), uploaded;
    returns the summary."""
    with zipfile.ZipFile(path, "w") as archive:
        for i, (image, label) in enumerate(zip(x, labels)):
            png = io.BytesIO()
            Image.fromarray(image).save(png, "PNG")
            archive.writestr(f"{CLASSES[label]}/{i}.png" if label >= 0 else f"photo{i}.png", png.getvalue())
    return client.predict([handle_file(str(path))], api_name="/upload")[0]


def current(client) -> str:
    return [row[0] for row in client.predict(api_name="/versions")["data"] if row[1] == "yes"][0]
