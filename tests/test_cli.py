"""The command line on a fresh CIFAR_HOME, as a newcomer runs it: it sees the shipped model
from the first command on, pushes it to a (local) Hub, and a Hub user loads the pushed version
with Keras alone, in a Python where this package cannot be imported."""
import json
import os
import subprocess
import sys

import numpy as np
from conftest import ROOT
from hub_server import HubServer

from cifar import config, data, predict
from cifar.registry import Registry

TOKEN = "hf_clitestsecret1234567890"


def cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "cifar", *args], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=600)


def test_versions_and_push_work_on_a_fresh_home_and_keras_alone_loads_the_push(tmp_path):
    shipped = Registry(config.shipped_models_dir()).current()
    listed = cli("versions")  # CIFAR_HOME is a fresh folder (conftest)
    assert listed.returncode == 0, listed.stderr
    assert f"* {shipped.id}" in listed.stdout

    server = HubServer(token=TOKEN).start()
    try:
        hub_env = {"HF_ENDPOINT": server.url, "HF_TOKEN": TOKEN, "HF_HUB_DISABLE_XET": "1",
                   "HF_HOME": str(tmp_path / "hf-home"), "HF_REPO_ID": "newcomer/cifar10"}
        pushed = cli("push", env=hub_env)
        assert pushed.returncode == 0, pushed.stderr
        assert f"pushed {shipped.id}" in pushed.stdout and TOKEN not in pushed.stdout + pushed.stderr
        files = server.repos["newcomer/cifar10"].commits[-1]["files"]
        card = files["README.md"][0].decode()
        assert "../" not in card and "shared/cifar10" not in card                 # no local paths
        assert 'keras.saving.load_model("hf://newcomer/cifar10")' in card
        temperature = json.loads(files["calibration.json"][0].decode())["temperature"]
        assert f"logits / {temperature:.4f}" in card and "0 airplane, 1 automobile" in card

        x, _ = data.holdout()
        np.save(tmp_path / "pixels.npy", x[:64])
        script = (
            "import importlib.util, sys, numpy as np, keras\n"
            "assert importlib.util.find_spec('cifar') is None, 'cifar must not be importable here'\n"
            "model = keras.saving.load_model('hf://newcomer/cifar10')\n"
            "np.save(sys.argv[1], model.predict(np.load(sys.argv[2]).astype('float32'), verbose=0))\n")
        isolated = subprocess.run([sys.executable, "-I", "-c", script, str(tmp_path / "logits.npy"),
                                   str(tmp_path / "pixels.npy")], cwd=tmp_path, capture_output=True, text=True,
                                  env={**os.environ, **hub_env, "PYTHONPATH": ""}, timeout=600)
        assert isolated.returncode == 0, isolated.stderr[-3000:]
    finally:
        server.stop()
    remote = np.load(tmp_path / "logits.npy")
    local = predict.Predictor.load(shipped.model_path, tta_level=0).logits(x[:64])
    np.testing.assert_allclose(remote, local, atol=2e-2)
    assert (remote.argmax(1) == local.argmax(1)).mean() >= 0.98


def test_convert_makes_the_checked_runtime_of_a_version_and_never_overwrites_it(tmp_path):
    import shutil

    from cifar import runtime

    shipped = Registry(config.shipped_models_dir()).current()
    folder = tmp_path / shipped.id
    shutil.copytree(shipped.path, folder, ignore=shutil.ignore_patterns(runtime.FOLDER))
    made = cli("convert", "--model", str(folder))
    assert made.returncode == 0, made.stderr[-2000:]
    report = json.loads((folder / runtime.FOLDER / "runtime.json").read_text())
    # Which precision passes depends on the CPU (int8 kernels differ); the first that passed is
    # kept, the command says which, and each one tried is listed with its numbers.
    tried = report["tried"]
    kept = next((p for p, r in tried.items() if r["passed"]), None)
    assert list(tried)[0] == "int8" and report.get("precision") == kept and report["passed"] == (kept is not None)
    assert made.stdout.startswith(f"{shipped.id}: {'OpenVINO ' + kept if kept else 'Keras: no OpenVINO model'}")
    for precision, result in tried.items():
        assert f"  {precision}: {result['agreement']:.2%} same answers as Keras" in made.stdout
    again = cli("convert", "--model", str(folder))
    assert again.returncode != 0 and "versions are immutable" in again.stderr
