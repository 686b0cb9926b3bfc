"""A process killed during a retrain: after restart the uploads and the registry are intact and
the previous version is current. Predictions keep flowing while a retrain runs."""
import json
import signal
import threading
import time

from conftest import AppProcess
from gradio_client import Client, handle_file


def wait_for_log(app: AppProcess, text: str, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while text not in app.log.read_text():
        assert time.time() < deadline, f"never saw {text!r} in the log"
        time.sleep(0.2)


def test_sigkill_during_retrain_loses_nothing(tmp_path, test_split):
    from PIL import Image

    from cifar import CLASSES

    x, y = test_split
    files = []
    for i in range(0, 10000, 400):  # labeled by name, so the retrain surely trains
        files.append(tmp_path / f"{CLASSES[y[i]]}_{i}.png")
        Image.fromarray(x[i]).save(files[-1])
    home = tmp_path / "home"
    app = AppProcess(home)
    client = Client(app.url, verbose=False)
    client.predict([handle_file(str(f)) for f in files], api_name="/upload")
    versions_before = client.predict(api_name="/versions")["data"]
    manifest_before = (home / "uploads" / "manifest.jsonl").read_text()
    state_before = json.loads((home / "models" / "state.json").read_text())

    client.submit(0.5, 3, "", api_name="/retrain")
    wait_for_log(app, "retrain started")
    # Predictions during the retrain: all succeed.
    failures, done = [], []
    def keep_predicting():
        while len(done) < 5:
            try:
                client.predict(handle_file("assets/examples/dog.png"), api_name="/predict")
                done.append(1)
            except Exception as exc:
                failures.append(exc)
                return
    worker = threading.Thread(target=keep_predicting)
    worker.start()
    worker.join(120)
    assert not failures and len(done) == 5
    time.sleep(1.0)
    assert "saving the new version" not in app.log.read_text()  # still training: the kill lands mid-retrain
    app.proc.send_signal(signal.SIGKILL)
    app.proc.wait()

    restarted = AppProcess(home)
    try:
        client = Client(restarted.url, verbose=False)
        assert client.predict(api_name="/versions")["data"] == versions_before
        assert (home / "uploads" / "manifest.jsonl").read_text() == manifest_before
        assert json.loads((home / "models" / "state.json").read_text())["current"] == state_before["current"]
        assert not list((home / "models" / "versions").glob(".staging-*"))  # cleaned at start
        label, _ = client.predict(handle_file("assets/examples/dog.png"), api_name="/predict")
        assert label["label"]
    finally:
        restarted.stop()
