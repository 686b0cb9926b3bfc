"""What serves, in the app's own process: without OpenVINO, without batching, after a failed Hub pull
at start, without TensorFlow where a checked OpenVINO model serves; and the words the Predict tab
puts under an unsure answer."""
import json
import logging
import shutil
import sys
from pathlib import Path

import huggingface_hub.constants as hub_constants
import numpy as np
from conftest import AppProcess
from gradio_client import Client, handle_file
from hub_server import HubServer

from cifar import CLASSES, config, data, model as net, runtime, serving, versions
from cifar.registry import Registry, Version
from cifar.ui.predict import unsure_note


def test_without_openvino_and_without_batching_keras_serves_right_answers_and_says_why(monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # `import openvino` now fails, as where it is not installed
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)  # (a cap would turn it off for another reason)
    monkeypatch.setenv("CIFAR_MAX_BATCH", "1")
    from cifar.service import Service

    service = Service()
    assert not isinstance(service.predictor.network, runtime.OpenVINONetwork) and service.batcher is None
    field = service.monitoring()
    assert field["runtime"] == "Keras: OpenVINO is not installed (pip install openvino nncf)"
    assert field["tta_levels"] == {}
    x, y = data.holdout()
    answers = [max(service.predict(x[i]).items(), key=lambda kv: kv[1])[0] for i in range(0, 2000, 40)]
    assert np.mean([a == CLASSES[y[i]] for a, i in zip(answers, range(0, 2000, 40))]) > 0.85


def test_an_app_served_by_its_checked_openvino_model_never_loads_tensorflow(tmp_path):
    """The shipped version's OpenVINO models (int8, and the float one beside it where int8 fails its
    check on this CPU) need no Keras to serve: the app starts and answers with no TensorFlow in its
    memory. Where neither serves (a float one is made from Keras, or Keras serves), Keras had to be
    loaded, and it is."""
    app = AppProcess(tmp_path / "home", env={"CIFAR_TTA": "2"})
    try:
        client = Client(app.url, verbose=False)
        label, _ = client.predict(handle_file("assets/examples/cat.png"), api_name="/predict")
        served = client.predict(api_name="/monitoring")["runtime"]
        tensorflow_mapped = "libtensorflow" in Path(f"/proc/{app.proc.pid}/maps").read_text()
        assert label["label"] == "cat"
        made_from_keras = list((tmp_path / "home" / "cache").glob("runtime-float-*"))
        assert tensorflow_mapped == (not served.startswith("OpenVINO") or bool(made_from_keras)), served
    finally:
        app.stop()


def test_a_failed_hub_pull_at_start_serves_the_shipped_model_and_says_why(monkeypatch, caplog, tmp_path):
    hub = HubServer(token="the-hubs-own-token").start()  # refuses the app's token
    try:
        monkeypatch.setenv("CIFAR_FROM_HUB", "1")
        monkeypatch.setenv("HF_REPO_ID", "team/cifar")
        monkeypatch.setenv("HF_TOKEN", "hf_notTheHubsToken1234567")
        monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
        monkeypatch.setattr(hub_constants, "ENDPOINT", hub.url)
        monkeypatch.setattr(hub_constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                            hub.url + "/{repo_id}/resolve/{revision}/{filename}")
        monkeypatch.setattr(hub_constants, "HF_HUB_DISABLE_XET", True)
        registry = Registry(config.registry_dir())
        with caplog.at_level(logging.WARNING, logger="cifar"):
            serving.seed_registry(registry)
    finally:
        hub.stop()
    shipped = Registry(config.shipped_models_dir()).current().id
    assert registry.current().id == shipped
    assert "starting from the shipped model" in caplog.text and "hf_notTheHubsToken" not in caplog.text


def test_an_unsure_answer_says_so_and_a_sure_one_names_the_class():
    unsure = dict.fromkeys(CLASSES, 0.05) | {"cat": 0.41, "dog": 0.19}
    assert unsure_note(unsure) == "Not sure: the best guess, cat, has only 41% confidence."
    assert unsure_note(dict.fromkeys(CLASSES, 0.01) | {"ship": 0.91}) == "ship (91% confident)"


def test_a_version_saved_without_openvino_says_why_and_the_save_does_not_fail(monkeypatch, tmp_path):
    """A retrain hands over the folder where it built the runtime; without OpenVINO there is none
    (this once failed every retrain on such a machine): the version is saved, Keras serves it."""
    monkeypatch.setitem(sys.modules, "openvino", None)
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    shipped = Registry(config.shipped_models_dir()).current()
    registry = Registry(tmp_path / "registry")
    (tmp_path / "staging").mkdir()
    version = versions.save_model_version(registry, "retrain", net.load(shipped.model_path), {"parent": shipped.id},
                                          {"accuracy": 0.9, "per_class": {}, "tta_level": 0}, {},
                                          built_runtime=tmp_path / "staging")
    assert (version.path / "model.keras").exists() and not (version.path / runtime.FOLDER).exists()
    assert version.metadata["runtime"]["why"] == "OpenVINO is not installed (pip install openvino nncf)"
    served = serving.load_predictor(version, 0)  # one view: its calibration is fitted here, on Keras' logits
    assert not isinstance(served.network, runtime.OpenVINONetwork)


def test_a_version_served_at_another_level_needs_no_keras_pass_and_an_older_one_one(monkeypatch, tmp_path):
    """The shipped version stores its calibration and Keras' answers at every test-time level: served
    flip only (an AVX2-only CPU's level) it needs no Keras pass. A version that stores them at 6
    views only (made before) needs one over the held-out images, shared by both, and cached for the
    next start."""
    seen = []
    keras_network = net.keras_network

    def counting(model):
        run = keras_network(model)
        return lambda x: seen.append(len(x)) or run(x)

    monkeypatch.setattr(net, "keras_network", counting)
    shipped = Registry(config.shipped_models_dir()).current()
    assert shipped.calibration["tta_level"] == 2
    predictor = serving.load_predictor(shipped, 1, tmp_path / "cache")
    assert predictor.calibration["tta_level"] == 1 and sum(seen) == 0
    shutil.copytree(shipped.path, tmp_path / "older" / shipped.id)
    older = Version(shipped.id, tmp_path / "older" / shipped.id)  # as made before the lower levels were stored
    shutil.rmtree(older.path / runtime.FALLBACK)
    stored = json.loads((older.path / runtime.FOLDER / "runtime.json").read_text())
    (older.path / runtime.FOLDER / "runtime.json").write_text(json.dumps(
        {k: v for k, v in stored.items() if k not in ("keras_answers_by_level", "checks")}))
    fitted = json.loads((older.path / "calibration.json").read_text())
    (older.path / "calibration.json").write_text(json.dumps({k: v for k, v in fitted.items() if k != "by_level"}))
    predictor = serving.load_predictor(older, 1, tmp_path / "cache")
    assert predictor.calibration["tta_level"] == 1
    if runtime.available():  # where OpenVINO serves, its check is at that level too
        assert predictor.runtime["runtime"] == "openvino" and predictor.runtime["tta_level"] == 1
    assert sum(seen) == 2 * len(data.holdout()[1])            # the image and its mirror, once each
    seen.clear()
    again = serving.load_predictor(older, 1, tmp_path / "cache")
    assert sum(seen) == 0 and again.calibration == predictor.calibration
