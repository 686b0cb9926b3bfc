"""A process killed during a retrain: after restart the uploads and the registry are intact, the
previous version is current, and the retrain's job says it was interrupted. Predictions keep
flowing while a retrain runs."""
import json
import signal
import threading
import time

import psutil
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

    job = client.predict(0.5, 3, "", api_name="/retrain_start")
    assert job["state"] == "queued" and job["id"]  # answered at once: the retrain runs as a job
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
    deadline = time.time() + 120
    while not (status := client.predict(job["id"], api_name="/retrain_status"))["phase"].startswith("training"):
        assert status["state"] in ("queued", "running") and time.time() < deadline, status
        time.sleep(0.2)
    # The retrain runs in a process of its own (serving keeps its GIL), niced so serving comes first.
    served_by = psutil.Process(app.proc.pid)
    retrain = [child for child in served_by.children() if "cifar.retrain_process" in child.cmdline()]
    assert len(retrain) == 1 and retrain[0].nice() == 10 and served_by.nice() == 0
    app.proc.send_signal(signal.SIGKILL)  # mid-training, as the job's own state said
    app.proc.wait()
    # No orphan goes on to save a version nobody waits for.
    _, alive = psutil.wait_procs(retrain, timeout=60)
    assert not alive, "the retrain's process outlived the app"

    restarted = AppProcess(home)
    try:
        client = Client(restarted.url, verbose=False)
        assert client.predict(api_name="/versions")["data"] == versions_before
        assert (home / "uploads" / "manifest.jsonl").read_text() == manifest_before
        assert json.loads((home / "models" / "state.json").read_text())["current"] == state_before["current"]
        assert not list((home / "models" / "versions").glob(".staging-*"))  # cleaned at start
        label, _ = client.predict(handle_file("assets/examples/dog.png"), api_name="/predict")
        assert label["label"]
        # The job the kill ended says so, to anyone who asks, instead of "running" forever.
        status = client.predict(job["id"], api_name="/retrain_status")
        assert status["state"] == "interrupted" and "stopped while this job was running (training" in status["error"]
        assert client.predict("", api_name="/retrain_status")["id"] == job["id"]
    finally:
        restarted.stop()
