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

from cifar import config, data
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
        # And back: `pull` into an empty registry gets the same files.
        pulled = cli("pull", "--registry", str(tmp_path / "elsewhere"), env=hub_env)
        assert pulled.returncode == 0 and f"pulled {shipped.id}" in pulled.stdout, pulled.stderr[-2000:]
        copy = tmp_path / "elsewhere" / "versions" / shipped.id
        assert (copy / "model.keras").read_bytes() == shipped.model_path.read_bytes()
        missing = cli("pull", "--registry", str(tmp_path / "nowhere"), "--revision", "no-such-version", env=hub_env)
        assert missing.returncode != 0 and "has no version 'no-such-version'" in missing.stderr and TOKEN not in missing.stderr
    finally:
        server.stop()
    remote = np.load(tmp_path / "logits.npy")
    # The same file loaded the same way here (in the precision it was saved in; the app itself may
    # serve it in float32 on a CPU without native bf16, which moves logits by more than 0.02).
    import keras

    local = keras.saving.load_model(shipped.model_path, compile=False).predict(x[:64].astype("float32"), verbose=0)
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
    if runtime.available() is None:  # OpenVINO cannot run here (not installed, or a oneDNN cap): it says so
        assert f"{shipped.id}: Keras: OpenVINO is" in made.stdout and not (folder / runtime.FOLDER).exists()
        return
    report = json.loads((folder / runtime.FOLDER / "runtime.json").read_text())
    # Which precision passes depends on the CPU (int8 kernels differ); the first that passed is
    # kept, the command says which, and each one tried is listed with its numbers.
    tried = report["tried"]
    kept = next((p for p, r in tried.items() if r["passed"]), None)
    assert list(tried)[0] == "int8" and report.get("precision") == kept and report["passed"] == (kept is not None)
    assert f"\n{shipped.id}: {'OpenVINO ' + kept if kept else 'Keras: no OpenVINO model'}" in "\n" + made.stdout
    for precision, result in tried.items():
        assert f"  {precision}: {result['agreement']:.2%} same answers as Keras" in made.stdout
    again = cli("convert", "--model", str(folder))
    assert again.returncode != 0 and "versions are immutable" in again.stderr


def tiny_dataset(root):
    """A CIFAR-10 folder of 200 training images (the repository's replay samples) and 200 test
    images (held-out ones), laid out as the real one: train|test/<class>/N.png."""
    from PIL import Image

    from cifar import CLASSES

    for split, (x, y) in (("train", data.load_npz(data.replay_path())), ("test", data.holdout())):
        for n, i in enumerate(data.balanced_subset(y, 20, seed=0)):
            folder = root / split / CLASSES[y[i]]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(x[i]).save(folder / f"{n}.png")
    return root


def test_train_evaluate_calibrate_promote_and_rollback_from_the_command_line(tmp_path):
    import shutil

    folder, registry = tiny_dataset(tmp_path / "cifar"), tmp_path / "registry"
    reg = Registry(registry)
    reg.seed_from(config.shipped_models_dir())
    shipped = reg.current().id
    trained = cli("train", "--data", str(folder), "--out", str(registry), "--epochs", "1")
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert "training on 200 images" in trained.stdout and "calibrated: temperature" in trained.stdout
    new = trained.stdout.split("saved version ")[1].split()[0]
    assert Registry(registry).current().id == new != shipped                 # trained and made current

    assert cli("rollback", "--registry", str(registry)).stdout.strip() == f"current: {shipped}"
    assert cli("promote", "--registry", str(registry), new).stdout.strip() == f"current: {new}"
    wrong = cli("promote", "--registry", str(registry), "no-such-version")
    assert wrong.returncode != 0 and "no-such-version" in wrong.stderr

    version = Registry(registry).get(new)
    evaluated = cli("evaluate", "--model", str(version.path), "--data", str(folder), "--tta", "0")
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    report = json.loads((version.path / "evaluation.json").read_text())
    assert report["count"] == 200 and f"accuracy {report['accuracy']:.4f} on 200 images" in evaluated.stdout
    assert sum(row["support"] for row in report["per_class"].values()) == 200
    assert (version.path / "eval_confusion.png").stat().st_size > 5_000

    bare = tmp_path / "bare" / new                     # a version from before calibration existed
    shutil.copytree(version.path, bare, ignore=shutil.ignore_patterns("calibration.json"))
    calibrated = cli("calibrate", "--model", str(bare))
    assert calibrated.returncode == 0, calibrated.stderr[-3000:]
    fitted = json.loads((bare / "calibration.json").read_text())
    assert fitted["temperature"] > 0 and f"temperature {fitted['temperature']:.4f}" in calibrated.stdout
    again = cli("calibrate", "--model", str(bare))
    assert again.returncode != 0 and "versions are immutable" in again.stderr
