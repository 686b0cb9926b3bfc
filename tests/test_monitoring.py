"""The model in the field, through the real app's API: the /monitoring numbers and alert follow
what is sent, and an upload says whether retraining on it is worth it."""
import pytest
from conftest import AppProcess
from gradio_client import Client, handle_file
from PIL import Image

from cifar import bench_retrain, data


@pytest.fixture(scope="module")
def fresh_app(tmp_path_factory):
    app = AppProcess(tmp_path_factory.mktemp("monitoring") / "home")  # its own window of predictions
    yield app
    app.stop()


def save(images, folder, prefix):
    folder.mkdir(exist_ok=True)
    paths = []
    for i, image in enumerate(images):
        paths.append(folder / f"{prefix}{i:03d}.png")
        Image.fromarray(image).save(paths[-1])
    return [handle_file(str(p)) for p in paths]


def test_clean_traffic_raises_no_alert_and_shifted_traffic_does(fresh_app, test_split, tmp_path):
    client = Client(fresh_app.url, verbose=False)
    x, _ = test_split
    assert client.predict(api_name="/monitoring")["predictions"] == 0
    clean = save(x[5:6000:50], tmp_path / "clean", "img")                         # 120 clean images
    for file in clean[:10]:                                                      # one by one, as /predict
        client.predict(file, api_name="/predict")
    client.predict(clean[10:], api_name="/predict_batch")
    field = client.predict(api_name="/monitoring")
    assert field["predictions"] == 120 and not field["alert"]
    assert abs(field["estimated_accuracy"] - field["reference_accuracy"]) < 0.05
    assert field["endpoints"][0]["requests"] >= 10 and field["timeline"][-1]["predictions_per_minute"] > 0

    shifted = save(bench_retrain.apply_shift("pixelate", x[7:9000:30], seed=0), tmp_path / "shifted", "img")
    client.predict(shifted, api_name="/predict_batch")                            # 300 pixelated images
    field = client.predict(api_name="/monitoring")
    assert field["predictions"] == 420 and field["alert"]
    assert field["estimated_accuracy"] < field["reference_accuracy"] - 0.1   # 300 of the 420 pixelated
    assert "Upload such images" in field["alert_message"] and "retrain" in field["alert_message"].lower()
    assert sum(v["served"] for v in field["class_mix"].values()) == pytest.approx(1.0, abs=0.01)


def test_an_upload_says_whether_to_retrain(fresh_app, tmp_path):
    client = Client(fresh_app.url, verbose=False)
    x, _ = data.holdout()
    summary, *_ = client.predict(save(x[:100], tmp_path / "clean", "photo"), api_name="/upload")
    assert "Estimated accuracy of the current model on these 100 images" in summary and "optional" in summary
    shifted = bench_retrain.apply_shift("pixelate", x[100:300], seed=0)
    summary, *_ = client.predict(save(shifted, tmp_path / "shifted", "photo"), api_name="/upload")
    assert "these 200 images" in summary and "retraining on them is recommended" in summary
