"""A person in the loop: the review queue's order, labels that survive restarts and SIGKILL,
bad input, and the queue and labels through the real app (a retrain using them: test_promotion)."""
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from conftest import ROOT
from gradio_client import Client, handle_file
from PIL import Image

from cifar import CLASSES
from cifar.learning import review
from cifar.uploads import NOT_A_CLASS, UnknownUpload, UploadStore


def store_with_grey_images(tmp_path, values) -> tuple[UploadStore, dict[int, str]]:
    """Unlabeled uploads, each a flat grey image of one value; their ids by value."""
    paths = []
    for v in values:
        paths.append(tmp_path / f"img{v}.png")
        Image.new("RGB", (32, 32), (v, v, v)).save(paths[-1])
    store = UploadStore(tmp_path / "store")
    assert store.add(paths, batch="b").accepted == len(values)
    return store, {int(r["file"][3:-4]): r["sha1"] for r in store.records()}


class GreyLevelModel:
    """Stands in for the network: its margin between 'cat' and 'dog' grows with the grey level,
    so the least sure image is known by construction."""
    version, tta_level = "grey", 0

    def predict_arrays(self, x):
        level = x[:, 0, 0, 0].astype(float) / 255
        p = np.full((len(x), 10), 0.0)
        p[:, 3], p[:, 5] = 0.5 + level / 2, 0.5 - level / 2
        p[level > 0.5, 3], p[level > 0.5, 5] = p[level > 0.5, 5], p[level > 0.5, 3]  # bright ones: dog
        return p


def test_margin_order_on_a_hand_made_case():
    p = np.array([[0.5, 0.4, 0.1], [0.9, 0.05, 0.05], [0.34, 0.33, 0.33], [0.6, 0.2, 0.2]])
    assert review.margin(p) == pytest.approx([0.1, 0.85, 0.01, 0.4])
    assert list(review.order(p)) == [2, 0, 3, 1]


def test_queue_shows_the_least_sure_first_filters_and_leaves_out_labeled(tmp_path):
    store, ids = store_with_grey_images(tmp_path, [200, 10, 90, 250, 40, 160])
    queue = review.ReviewQueue(store)
    model = GreyLevelModel()
    # margin = level (0-1): the darkest image is the coin toss between cat and dog
    assert [i["id"] for i in queue.next(model, 6)] == [ids[v] for v in (10, 40, 90, 160, 200, 250)]
    margins = [i["margin"] for i in queue.next(model, 6)]
    assert margins == sorted(margins)
    first = queue.next(model, 1)[0]
    assert first["id"] == ids[10] and first["guess"] == "cat"
    assert [i["guess"] for i in queue.next(model, 6, predicted="dog")] == ["dog"] * 3
    store.review(ids[10], "frog")
    store.review(ids[40], NOT_A_CLASS)
    left = [i["id"] for i in queue.next(model, 6, skip=[ids[90]])]
    assert ids[10] not in left and ids[40] not in left and ids[90] not in left and len(left) == 3
    assert queue.progress(model) == {"reviewed": 2, "left": 4, "not_a_class": 1, "guess_right": 0, "guess_checked": 1}


def test_labels_survive_a_restart_last_one_wins_and_history_is_kept(tmp_path):
    store, ids = store_with_grey_images(tmp_path, [1, 2, 3])
    assert store.review(ids[1], "dog") is None
    assert store.review(ids[1], "cat") == "dog"
    store.review(ids[2], NOT_A_CLASS)
    again = UploadStore(tmp_path / "store")  # a restart
    assert again.reviews() == {ids[1]: "cat", ids[2]: NOT_A_CLASS}
    assert [h["label"] for h in again.review_history(ids[1])] == ["dog", "cat"]
    x, y, _records = again.load()
    assert len(x) == 2 and sorted(y.tolist()) == [-1, CLASSES.index("cat")]   # 'none of these' left out
    assert again.counts()["labels (file names and reviews)"]["cat"] == 1
    again.review(ids[1], None)                  # undo
    assert ids[1] not in again.reviews()


def test_bad_labels_are_refused_and_change_nothing(tmp_path):
    store, ids = store_with_grey_images(tmp_path, [5])
    with pytest.raises(UnknownUpload):
        store.review("0" * 40, "dog")
    with pytest.raises(UnknownUpload):
        store.review("../../etc/passwd", "dog")
    with pytest.raises(ValueError, match="unknown class 'dragon'"):
        store.review(ids[5], "dragon")
    assert store.reviews() == {} and not store.reviews_file.exists()


def test_concurrent_labelling_loses_nothing(tmp_path):
    store, ids = store_with_grey_images(tmp_path, list(range(20)))
    def label_all(name):
        for v in range(20):
            store.review(ids[v], name)
    threads = [threading.Thread(target=label_all, args=(c,)) for c in ("cat", "dog", "ship")]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert len(store.reviews_file.read_text().splitlines()) == 60                # every label a whole line
    assert len(store.reviews()) == 20 and set(store.reviews().values()) <= {"cat", "dog", "ship"}


WRITER = """
import sys
from cifar.uploads import UploadStore
store = UploadStore(sys.argv[1])
ids = [r["sha1"] for r in store.records()]
n = 0
while True:
    store.review(ids[n % len(ids)], ["cat", "dog", "frog"][n % 3])
    n += 1
    print(n, flush=True)
"""


def test_sigkill_mid_write_keeps_every_confirmed_label_and_the_store_usable(tmp_path):
    store, ids = store_with_grey_images(tmp_path, [7, 8, 9])
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path / "store")], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)
    confirmed = 0
    deadline = time.time() + 60
    while confirmed < 200 and time.time() < deadline:
        confirmed = int(proc.stdout.readline() or confirmed)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with open(store.reviews_file, "ab") as handle:   # as if killed half-way through a line
        handle.write(b'{"id": "' + ids[7].encode() + b'", "label": "sh')
    after = UploadStore(tmp_path / "store")
    lines = sum(len(after.review_history(i)) for i in ids.values())
    assert lines >= confirmed >= 200
    assert set(after.reviews().values()) <= {"cat", "dog", "frog"}
    after.review(ids[8], "truck")                    # the next label still lands, on its own line
    assert UploadStore(tmp_path / "store").reviews()[ids[8]] == "truck"


def test_queue_and_label_through_the_api(app_server, test_split, tmp_path):
    client = Client(app_server.url, verbose=False)
    x, _ = test_split
    paths = []
    for i in range(30):
        paths.append(tmp_path / f"photo{i}.png")
        Image.fromarray(x[1 + 331 * i]).save(paths[-1])
    client.predict([handle_file(str(p)) for p in paths], api_name="/upload")
    queue = client.predict(5, "", "", api_name="/review_queue")
    assert len(queue) == 5 and all(item["guess"] in CLASSES and item["image"].startswith("data:image/png") for item in queue)
    assert [item["margin"] for item in queue] == sorted(item["margin"] for item in queue)
    first, second = queue[0]["id"], queue[1]["id"]
    assert client.predict(first, "dog", "", api_name="/label")["previous"] is None
    again = client.predict(first, "7", "", api_name="/label")                     # a digit: horse
    assert again["label"] == "horse" and again["previous"] == "dog" and "history is kept" in again["message"]
    client.predict(second, "none", "", api_name="/label")
    with pytest.raises(Exception, match="No upload with id"):
        client.predict("f" * 40, "dog", "", api_name="/label")
    with pytest.raises(Exception, match="Unknown class 'dragon'"):
        client.predict(queue[2]["id"], "dragon", "", api_name="/label")
    assert first not in [i["id"] for i in client.predict(50, "", "", api_name="/review_queue")]
    # What a retrain makes of these labels: tests/test_promotion.py (one retrain for both).
