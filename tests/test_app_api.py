"""The real app, started on a free port, driven through every named endpoint with gradio_client."""
import io
import zipfile
from pathlib import Path

import pytest
from gradio_client import Client, handle_file
from PIL import Image

from cifar import CLASSES


@pytest.fixture(scope="module")
def client(app_server):
    return Client(app_server.url, verbose=False)


def save_cifar_image(x, path):
    Image.fromarray(x).save(path)
    return str(path)


def test_api_lists_every_endpoint(client):
    names = set(client.view_api(return_format="dict", print_info=False)["named_endpoints"])
    assert {"/predict", "/predict_batch", "/upload", "/retrain", "/retrain_start", "/retrain_status", "/rollback",
            "/versions", "/metrics", "/push", "/review_queue", "/label", "/monitoring"} <= names


def test_predict_real_test_images(client, test_split, tmp_path):
    x, y = test_split
    correct = 0
    for i in range(0, 10000, 1000):  # one image of each class
        label, note = client.predict(handle_file(save_cifar_image(x[i], tmp_path / f"{i}.png")), api_name="/predict")
        assert len(label["confidences"]) == 3 and label["label"] in CLASSES
        correct += label["label"] == CLASSES[y[i]]
        top = label["confidences"][0]["confidence"]  # the note names the answer and its confidence
        assert note in (f"{label['label']} ({top:.0%} confident)",
                        f"Not sure: the best guess, {label['label']}, has only {top:.0%} confidence.")
    assert correct >= 8


def test_predict_bad_input_is_a_clean_error(client, tmp_path):
    bad = tmp_path / "notes.jpg"
    bad.write_text("not a picture")
    with pytest.raises(Exception, match="not an image"):
        client.predict(handle_file(str(bad)), api_name="/predict")
    with pytest.raises(Exception, match="No image given"):
        client.predict(None, api_name="/predict")
    # The server is still up and serving.
    label, _ = client.predict(handle_file("assets/examples/ship.png"), api_name="/predict")
    assert label["label"] in CLASSES


def test_predict_batch_table_and_csv(client, test_split, tmp_path):
    x, _ = test_split
    files = [handle_file(save_cifar_image(x[i], tmp_path / f"img{i}.png")) for i in (0, 5000, 9000)]
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    table, csv_path = client.predict(files + [handle_file(str(bad))], api_name="/predict_batch")
    rows = table["data"]
    assert len(rows) == 4 and rows[-1][1] == "error" and "corrupt" in rows[-1][2]
    assert all(r[1] in CLASSES for r in rows[:3])
    assert Path(csv_path).read_text().startswith("file,class,confidence_or_error")


def test_upload_of_a_zip_counts_labels_and_rejects_what_it_cannot_keep(client, test_split, tmp_path):
    x, y = test_split
    buffer = tmp_path / "upload.zip"
    with zipfile.ZipFile(buffer, "w") as archive:
        for i in range(0, 10000, 250):          # 40 labeled images in class folders
            png = io.BytesIO()
            Image.fromarray(x[i]).save(png, "PNG")
            archive.writestr(f"{CLASSES[y[i]]}/{i}.png", png.getvalue())
        for i in range(7, 10000, 500):          # 20 unlabeled
            png = io.BytesIO()
            Image.fromarray(x[i]).save(png, "PNG")
            archive.writestr(f"misc/{i}.png", png.getvalue())
        archive.writestr("../escape.png", b"x")
        archive.writestr("readme.txt", b"hello")
    summary, rejected, _ = client.predict([handle_file(str(buffer))], api_name="/upload")
    assert "**60 accepted** (40 labeled, 20 unlabeled)" in summary
    assert sorted(r[0] for r in rejected["data"]) == ["../escape.png", "readme.txt"]
    again, _, _ = client.predict([handle_file(str(buffer))], api_name="/upload")  # the same images: stored once
    assert "**0 accepted**" in again and "60 duplicates skipped" in again, again


def test_retrain_status_answers_as_plain_http_too(client, app_server):
    """GET /api/retrain_status (outside Gradio's queue, for any HTTP client) gives what
    /retrain_status gives; an unknown job is a 404 with the reason."""
    import httpx

    plain = httpx.get(f"{app_server.url}/api/retrain_status", timeout=10)
    assert plain.status_code == 200
    assert plain.json() == client.predict("", api_name="/retrain_status")
    missing = httpx.get(f"{app_server.url}/api/retrain_status", params={"job_id": "20260101T000000Z-retrain-abcdef"},
                        timeout=10)
    assert missing.status_code == 404 and "No retrain job" in missing.json()["detail"]
