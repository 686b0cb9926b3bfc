"""The app's state on the Hub (cifar.state_sync) against the local Hub-compatible server: uploads
and labels reach the dataset repository once, through an outage too; the current version is a
conflict-checked record; an empty disk gets everything back, a corrupt file on the Hub skipped."""
import json
import re
import threading
import time

import huggingface_hub.constants as hub_constants
import numpy as np
import pytest
from hub_server import HubServer
from PIL import Image

from cifar import config, data, hub as cifar_hub, retrain_claim
from cifar.registry import Registry
from cifar.state_sync import StateSync
from cifar.uploads import UploadStore

TOKEN = "hf_statesynctoken123456789"
MODELS, DATASET = "team/cifar", "team/cifar-data"


@pytest.fixture
def hub(monkeypatch, tmp_path):
    server = HubServer(token=TOKEN).start()
    for name, value in (("HF_ENDPOINT", server.url), ("HF_TOKEN", TOKEN), ("HF_HUB_DISABLE_XET", "1"),
                        ("HF_HOME", str(tmp_path / "hf")), ("HF_REPO_ID", MODELS), ("CIFAR_SYNC_SPACING_S", "0")):
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(hub_constants, "ENDPOINT", server.url)
    monkeypatch.setattr(hub_constants, "HUGGINGFACE_CO_URL_TEMPLATE", server.url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(hub_constants, "HF_HUB_DISABLE_XET", True)
    yield server
    server.stop()


def app_state(root, versions=("shipped",)):
    """A registry seeded with the shipped version (plus copies of it under other ids), an upload
    store and their sync, on a disk of their own under `root`."""
    registry = Registry(root / "models")
    registry.seed_from(config.shipped_models_dir())
    for name in versions[1:]:
        registry.add_folder(registry.current().path, version_id=f"20261201T00000{name}Z-copy")
    uploads = UploadStore(root / "uploads")
    return registry, uploads, StateSync(registry, uploads, root)


def some_images(folder, count, start=0, name="photo"):
    x, _ = data.load_npz(data.replay_path())
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(start, start + count):
        paths.append(folder / f"{name}{i}.png")
        Image.fromarray(x[i]).save(paths[-1])
    return paths


def dataset_files(server) -> dict:
    return server.repos[f"datasets/{DATASET}"].head()["files"]


def test_stop_waits_for_the_push_under_way(hub, tmp_path):
    """A sync stopped during a push ends that push before stop() returns: nothing of it reaches a
    Hub later (an app shutting down; a test whose server the next test replaces)."""
    registry, _uploads, sync = app_state(tmp_path / "a")
    hub.commit_delay_s = 2            # a slow Hub: the version's commit is still under way...
    sync.start()
    assert hub.commit_received.wait(60)
    sync.stop()                       # ...when the sync is stopped
    assert registry.current().id in hub.repos[MODELS].tags


def test_uploads_and_labels_reach_the_hub_once_and_an_empty_disk_gets_them_back(hub, tmp_path):
    registry, uploads, sync = app_state(tmp_path / "a")
    bad = tmp_path / "in" / "notes.png"
    bad.parent.mkdir()
    bad.write_text("not a picture")
    report = uploads.add([*some_images(tmp_path / "in", 40), bad], batch="b1")
    assert report.accepted == 40 and len(report.rejected) == 1
    ids = [e["sha1"] for e in uploads.manifest_entries()]
    for upload_id, label in zip(ids[:10], ["cat", "dog", "none", "ship", "cat"] * 2):
        uploads.review(upload_id, label)
    assert sync.where() == "pending" and sync.status()["pending_uploads"] == 40
    sync.sync_once()
    sync.sync_once()  # nothing new: no second commit
    status = sync.status()
    assert status["pending_uploads"] == status["pending_labels"] == 0 and sync.where() == "hub"
    files = dataset_files(hub)
    assert sorted(p for p in files if p.startswith("images/")) == sorted(f"images/{i}.png" for i in ids)  # the refused one never
    assert sum(len(files[p][0].decode().splitlines()) for p in files if p.startswith("manifest/")) == 40
    assert sum(len(files[p][0].decode().splitlines()) for p in files if p.startswith("labels/")) == 10
    assert hub.repos[f"datasets/{DATASET}"].private and len(hub.repos[f"datasets/{DATASET}"].commits) == 1
    current = json.loads(hub.repos[MODELS].head()["files"][cifar_hub.CURRENT_FILE][0])
    assert current["version"] == registry.current().id and registry.current().id in hub.repos[MODELS].tags
    card = hub.repos[MODELS].head()["files"]["README.md"][0].decode()  # main: the current version, said so
    assert f"version `{current['version']}`" in card and "**This is the current version**" in card

    # A retried commit (a crash after the commit, before the watermark) writes the same files again.
    sync.state.update(manifest=0, reviews=0, inflight={"manifest": [0, 40], "reviews": [0, 10]})
    sync.sync_once()
    assert dataset_files(hub).keys() == files.keys()

    # A corrupt image on the Hub is left out at restore, with a message; the rest comes back.
    dataset_files(hub)[f"images/{ids[-1]}.png"] = (b"\x89PNG garbage", None)
    fresh_registry_empty = Registry(tmp_path / "c" / "models")
    restorer = StateSync(fresh_registry_empty, UploadStore(tmp_path / "c" / "uploads"), tmp_path / "c")
    line = restorer.restore()
    assert "current version" in line and "39 uploads and 10 label lines (1 skipped" in line, line
    assert fresh_registry_empty.current().id == registry.current().id
    back = restorer.uploads
    assert [e["sha1"] for e in back.manifest_entries()] == ids[:-1]
    assert back.reviews() == uploads.reviews()
    for upload_id in ids[:-1]:  # the same pixels
        assert np.array_equal(np.asarray(Image.open(back.image_path(upload_id))),
                              np.asarray(Image.open(uploads.image_path(upload_id))))
    assert restorer.status()["pending_uploads"] == 0  # what came from the Hub is not sent back


def test_an_outage_keeps_everything_pending_and_it_all_arrives_once_the_hub_is_back(hub, tmp_path):
    _registry, uploads, sync = app_state(tmp_path / "a")
    sync.sync_once()                                   # the shipped version and current.json
    hub.outage = (503, 1)
    uploads.add(some_images(tmp_path / "in", 12), batch="b1")
    uploads.review(uploads.manifest_entries()[0]["sha1"], "frog")
    with pytest.raises(cifar_hub.HubError, match="HTTP 503"):
        sync.sync_once()
    assert sync.status()["pending_uploads"] == 12 and sync.where() == "pending"
    hub.outage = (429, 7)                               # rate-limited: the wait the Hub asks for is kept
    with pytest.raises(cifar_hub.HubError) as limited:
        sync.sync_once()
    assert limited.value.retry_after == 7 and "HTTP 429" in str(limited.value)
    hub.outage = None
    sync.sync_once()
    files = dataset_files(hub)
    assert len([p for p in files if p.startswith("images/")]) == 12
    assert sum(len(files[p][0].decode().splitlines()) for p in files if p.startswith("labels/")) == 1
    assert len(hub.repos[f"datasets/{DATASET}"].commits) == 1


def test_two_apps_promote_at_once_exactly_one_wins_and_the_other_follows_the_hub(hub, tmp_path):
    versions = ("shipped", "1", "2")
    registry_a, _, sync_a = app_state(tmp_path / "a", versions)
    registry_b, _, sync_b = app_state(tmp_path / "b", versions)
    served_b = []
    sync_b.on_current = served_b.append
    sync_a.sync_once()
    sync_b.sync_once()                                  # both agree: the shipped version is current
    shipped = registry_a.current().id
    assert sync_b.state["current"] == shipped and sync_b.conflict is None
    registry_a.promote("20261201T000001Z-copy")
    registry_b.promote("20261201T000002Z-copy")
    stale = cifar_hub.head(MODELS)
    sync_a.sync_once()                                  # A first: its record stands
    with pytest.raises(cifar_hub.HubConflict):          # a commit on the head B read: refused
        cifar_hub.commit(MODELS, {cifar_hub.CURRENT_FILE: b"{}"}, "late", parent=stale)
    sync_b.sync_once()                                  # B second: it reads A's record and takes it
    on_hub = json.loads(hub.repos[MODELS].head()["files"][cifar_hub.CURRENT_FILE][0])["version"]
    assert on_hub == "20261201T000001Z-copy" == registry_a.current().id == registry_b.current().id
    assert served_b == [on_hub] and "conflict" in sync_b.conflict and "20261201T000002Z-copy" in sync_b.conflict


def test_a_replica_that_never_synced_follows_a_promotion_made_meanwhile_without_a_conflict(hub, tmp_path):
    """A replica just started (serving its seed, nothing recorded yet) whose first look at the Hub
    finds another's promotion takes it as a change made elsewhere: it made nothing current itself."""
    registry_a, _, sync_a = app_state(tmp_path / "a", ("shipped", "1"))
    registry_b, _, sync_b = app_state(tmp_path / "b")
    sync_a.sync_once()
    registry_a.promote("20261201T000001Z-copy")
    sync_a.sync_once()
    sync_b.sync_once()
    assert registry_b.current().id == "20261201T000001Z-copy" and sync_b.conflict is None
    assert registry_b.promotions()[-1][2] == "made current on another replica (followed from the Hub)"


def test_a_promotion_made_before_a_replicas_first_successful_sync_is_published_not_lost(hub, tmp_path, monkeypatch):
    """A replica whose first round failed (the Hub busy) and on which a person then made a version
    current: that choice is newer than the record the other replica published meanwhile, so it is
    published and followed, not overwritten by the Hub's."""
    monkeypatch.setenv("CIFAR_FOLLOW_S", "0")
    registry_a, _, sync_a = app_state(tmp_path / "a")
    registry_b, _, sync_b = app_state(tmp_path / "b", ("shipped", "1"))
    hub.outage = (503, 1)
    with pytest.raises(cifar_hub.HubError, match="HTTP 503"):
        sync_b.sync_once()
    hub.outage = None
    sync_a.sync_once()                                  # A records the shipped version as current
    registry_b.promote("20261201T000001Z-copy")          # a person on B, before B ever agreed with the Hub
    sync_b.sync_once()
    sync_a.sync_once()
    on_hub = json.loads(hub.repos[MODELS].head()["files"][cifar_hub.CURRENT_FILE][0])["version"]
    assert on_hub == registry_b.current().id == registry_a.current().id == "20261201T000001Z-copy"
    assert sync_b.conflict is None and sync_a.conflict is None


def test_replicas_follow_each_other_through_the_hub(hub, tmp_path, monkeypatch):
    """Two replicas on their own disks: a promotion, uploads and labels made on one reach the other
    at its next look at the Hub; what came from the Hub is never committed back as its own."""
    monkeypatch.setenv("CIFAR_FOLLOW_S", "0")
    registry_a, uploads_a, sync_a = app_state(tmp_path / "a", ("shipped", "1"))
    registry_b, uploads_b, sync_b = app_state(tmp_path / "b")
    served_b = []
    sync_b.on_current = served_b.append
    sync_a.sync_once()
    sync_b.sync_once()
    uploads_a.add(some_images(tmp_path / "in", 20), batch="a1")
    a_ids = [e["sha1"] for e in uploads_a.manifest_entries()]
    uploads_a.review(a_ids[0], "cat")
    registry_a.promote("20261201T000001Z-copy")
    sync_a.sync_once()
    dataset_commits = len(hub.repos[f"datasets/{DATASET}"].commits)

    sync_b.sync_once()
    assert registry_b.current().id == "20261201T000001Z-copy" and served_b == ["20261201T000001Z-copy"]
    assert sync_b.conflict is None  # a change made elsewhere and followed is no conflict
    assert [e["sha1"] for e in uploads_b.manifest_entries()] == a_ids and uploads_b.reviews() == {a_ids[0]: "cat"}
    assert (tmp_path / "b" / "uploads" / "images" / f"{a_ids[5]}.png").read_bytes()  # the pixels too
    assert sync_b.status()["pending_uploads"] == 0 and sync_b.status()["pending_labels"] == 0
    sync_b.sync_once()
    assert len(hub.repos[f"datasets/{DATASET}"].commits) == dataset_commits  # nothing sent back

    # B relabels one of A's uploads later: both replicas agree the later label stands.
    uploads_b.review(a_ids[0], "dog")
    sync_b.sync_once()
    sync_a.sync_once()
    assert uploads_a.reviews()[a_ids[0]] == uploads_b.reviews()[a_ids[0]] == "dog"
    assert [line["label"] for line in uploads_a.review_history(a_ids[0])] == ["cat", "dog"]


def test_one_retrain_claim_per_deployment_and_a_dead_replicas_claim_expires(hub, tmp_path, monkeypatch):
    app_state(tmp_path / "a")[2].sync_once()  # the model repository exists
    claim = retrain_claim.acquire(MODELS, "replica-a", "job-1")
    with pytest.raises(retrain_claim.Claimed) as refused:
        retrain_claim.acquire(MODELS, "replica-b", "job-2")
    assert str(refused.value).startswith("retraining on replica replica-a since ")
    assert retrain_claim.holder(MODELS)["job"] == "job-1"
    retrain_claim.release(MODELS, claim, "done")
    assert retrain_claim.holder(MODELS) is None
    monkeypatch.setenv("CIFAR_CLAIM_TTL_S", "-1")
    retrain_claim.acquire(MODELS, "replica-b", "job-3")  # free again; stands for a replica that died long ago
    monkeypatch.setenv("CIFAR_CLAIM_TTL_S", "600")
    taken = retrain_claim.acquire(MODELS, "replica-c", "job-5")  # expired: taken over
    assert taken["replica"] == "replica-c"
    with pytest.raises(retrain_claim.Claimed):  # the dead replica, back, cannot renew what it lost
        retrain_claim.renew(MODELS, {"job": "job-3"})


def test_two_replicas_claim_at_once_exactly_one_gets_it(hub, tmp_path):
    app_state(tmp_path / "a")[2].sync_once()
    start, outcomes = threading.Barrier(2), []

    def claim(name):
        start.wait()
        try:
            outcomes.append(("won", retrain_claim.acquire(MODELS, name, f"job-{name}")["replica"]))
        except retrain_claim.Claimed as exc:
            outcomes.append(("refused", exc.claim["replica"]))

    threads = [threading.Thread(target=claim, args=(name,)) for name in ("x", "y")]
    [thread.start() for thread in threads]
    [thread.join(60) for thread in threads]
    winners = [name for outcome, name in outcomes if outcome == "won"]
    assert len(winners) == 1 and outcomes.count(("refused", winners[0])) == 1
    assert retrain_claim.holder(MODELS)["replica"] == winners[0]


def test_sigkill_then_an_empty_disk_the_app_comes_back_with_everything(tmp_path):
    """As a Space restart does it: 200 uploads and 50 labels through the API, a rollback, SIGKILL,
    then the app on a new empty CIFAR_HOME: the same images, labels, review queue and current version."""
    import signal
    import zipfile

    from conftest import AppProcess
    from gradio_client import Client, handle_file

    server = HubServer(token=TOKEN).start()
    env = {"HF_ENDPOINT": server.url, "HF_TOKEN": TOKEN, "HF_HUB_DISABLE_XET": "1", "HF_HOME": str(tmp_path / "hf"),
           "HF_REPO_ID": MODELS, "CIFAR_SYNC_SPACING_S": "1"}
    app_state(tmp_path / "a" / "home", ("shipped", "1"))  # a second version to roll back to
    app = AppProcess(tmp_path / "a" / "home", env=env)
    try:
        client = Client(app.url, verbose=False)
        with zipfile.ZipFile(tmp_path / "photos.zip", "w") as archive:
            for path in some_images(tmp_path / "in", 200):
                archive.write(path, path.name)
        summary = client.predict([handle_file(str(tmp_path / "photos.zip"))], api_name="/upload")[0]
        assert "**200 accepted**" in summary and f"On the Hub ({DATASET}): pending" in summary, summary
        queue = client.predict(50, "", "", api_name="/review_queue")
        answers = [client.predict(item["id"], item["guess"], "", api_name="/label") for item in queue]
        assert len(answers) == 50 and answers[-1]["hub"] in ("pending", "hub")
        client.predict("20261201T000001Z-copy", "", api_name="/rollback")
        deadline = time.time() + 240
        while (status := client.predict(api_name="/monitoring")["hub"])["pending_uploads"] or \
                status["pending_labels"] or status["current_on_hub"] != "20261201T000001Z-copy":
            assert time.time() < deadline and status["last_error"] is None, status
            time.sleep(0.5)
        queue_before = [item["id"] for item in client.predict(20, "", "", api_name="/review_queue")]
        before = UploadStore(tmp_path / "a" / "home" / "uploads")
        app.proc.send_signal(signal.SIGKILL)
        app.proc.wait()

        fresh = AppProcess(tmp_path / "b" / "home", env=env)  # an empty disk
        try:
            again = Client(fresh.url, verbose=False)
            assert [r[0] for r in again.predict(api_name="/versions")["data"] if r[1] == "yes"] == ["20261201T000001Z-copy"]
            after = UploadStore(tmp_path / "b" / "home" / "uploads")
            assert [e["sha1"] for e in after.manifest_entries()] == [e["sha1"] for e in before.manifest_entries()]
            assert after.reviews() == before.reviews() and len(after.reviews()) == 50
            assert all(after.image_path(i).read_bytes() == before.image_path(i).read_bytes() for i in after.reviews())
            assert [item["id"] for item in again.predict(20, "", "", api_name="/review_queue")] == queue_before
            assert re.search(r"restored from the Hub in [\d.]+ s: current version 20261201T000001Z-copy; "
                             r"200 uploads and 50 label lines", fresh.log.read_text())
        finally:
            fresh.stop()
    finally:
        app.stop()
        server.stop()
