"""Push and pull through the real huggingface_hub client against a local Hub-compatible server."""
import numpy as np
import pytest
from conftest import needs_openvino
from hub_server import HubServer

from cifar import data, predict, train, versions
from cifar.registry import Registry

TOKEN = "hf_localtestsecret1234567890"


@pytest.fixture
def hub(monkeypatch, tmp_path):
    server = HubServer(token=TOKEN).start()
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_REPO_ID", "cifar-team/cifar10-classifier")
    import huggingface_hub.constants as constants  # read at import time: point them at the server
    monkeypatch.setattr(constants, "ENDPOINT", server.url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", server.url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def two_versions(tmp_path_factory, test_split):
    """Two small real models trained for a few steps, in a registry."""
    x, y = test_split
    picks = data.balanced_subset(y, 20, seed=0)
    reg = Registry(tmp_path_factory.mktemp("hubreg"))
    made = []
    for seed in (0, 1):
        result = train.train_from_scratch(x[picks], y[picks], epochs=2, widths=(16, 32, 32), seed=seed)
        made.append(versions.save_model_version(reg, f"scratch{seed}", result.model, {"train_count": 200},
                                                {"accuracy": 0.5, "per_class": {}}, result.history))
    return reg, made


def test_round_trip_two_versions(hub, two_versions, test_split, tmp_path):
    from cifar import hub as cifar_hub

    _reg, (old, new) = two_versions
    for version in (old, new):
        cifar_hub.push(version)
    assert cifar_hub.tags() == sorted([old.id, new.id])
    repo = hub.repos["cifar-team/cifar10-classifier"]
    assert len(repo.commits) == 2
    card = repo.commits[0]["files"]["README.md"][0].decode()
    assert card.startswith("---\n") and "library_name: keras" in card and "model-index" in card

    # Every file of the version travels, its runtime's check with it (where this CPU made one), and
    # comes back unchanged; only the card is written anew for the repository.
    local = {p.relative_to(old.path).as_posix() for p in old.path.rglob("*") if p.is_file()}
    assert local <= set(repo.commits[0]["files"]) and "model.keras" in local
    fresh = Registry(tmp_path / "fresh")
    pulled = cifar_hub.pull(fresh, old.id)
    for name in local - {"README.md"}:
        assert (pulled.path / name).read_bytes() == (old.path / name).read_bytes(), name
    assert pulled.id == old.id and [v.id for v in fresh.list()] == [old.id]
    x, _ = test_split
    sample = x[::250]
    local = predict.Predictor.load(old.model_path).predict_arrays(sample)
    remote = predict.Predictor.load(pulled.model_path).predict_arrays(sample)
    np.testing.assert_array_equal(local, remote)
    assert not np.allclose(remote, predict.Predictor.load(new.model_path).predict_arrays(sample))


def test_wrong_token_gives_a_clear_error_without_the_token(hub, two_versions, monkeypatch):
    from cifar import hub as cifar_hub

    monkeypatch.setenv("HF_TOKEN", "hf_wrongtoken0987654321")
    with pytest.raises(cifar_hub.HubError) as info:
        cifar_hub.push(two_versions[1][0])
    assert "token" in str(info.value) and "hf_wrongtoken" not in str(info.value)


def test_server_dying_mid_push_loses_nothing_and_retry_succeeds(hub, two_versions):
    from cifar import hub as cifar_hub

    _reg, (old, _) = two_versions
    before = {p: p.read_bytes() for p in old.path.rglob("*") if p.is_file()}
    # One file's upload drops the connection (the client retries it), then the server dies on the
    # commit, every file already with it (a commit is not retried).
    hub.fail_uploads, hub.fail_commits = 1, 1
    with pytest.raises(cifar_hub.HubError):
        cifar_hub.push(old)
    assert hub.fail_uploads == 0 and hub.fail_commits == 0     # it got that far
    assert {p: p.read_bytes() for p in old.path.rglob("*") if p.is_file()} == before
    assert old.id not in cifar_hub.tags() and not hub.repos["cifar-team/cifar10-classifier"].commits
    commit = cifar_hub.push(old)
    assert cifar_hub.tags() == [old.id] and len(commit) == 40
    assert "model.keras" in hub.repos["cifar-team/cifar10-classifier"].resolve(old.id)["files"]


def test_missing_tag(hub, two_versions, tmp_path):
    from cifar import hub as cifar_hub

    cifar_hub.push(two_versions[1][0])
    with pytest.raises(cifar_hub.HubError, match=r"has no version .* \(no such tag\)"):
        cifar_hub.pull(Registry(tmp_path / "r"), "20990101T000000Z-none")


def test_app_can_start_from_the_newest_pushed_version(hub, two_versions, monkeypatch):
    from cifar import hub as cifar_hub
    from cifar.service import Service

    _, (old, new) = two_versions
    cifar_hub.push(old)
    cifar_hub.push(new)
    monkeypatch.setenv("CIFAR_FROM_HUB", "1")
    service = Service()  # a fresh CIFAR_HOME (see conftest): everything comes from the Hub
    service.sync.stop()  # its Hub sync thread must not outlive this test's server
    assert service.predictor.version == new.id
    assert service.registry.promotions()[-1][2] == "pulled from the Hub at start"


@needs_openvino
def test_a_pulled_version_without_a_runtime_gets_one(hub, two_versions, tmp_path):
    """A version without a runtime (pushed before the runtime existed, or turned down by its retrain)
    pushed after one with it: its tag does not carry the other's runtime, and the pull converts
    and checks it."""
    import shutil

    from cifar import hub as cifar_hub, runtime

    _, (old, new) = two_versions
    older = tmp_path / old.id
    shutil.copytree(old.path, older, ignore=shutil.ignore_patterns(runtime.FOLDER))
    cifar_hub.push(new)  # the repository's tree now holds new's runtime...
    cifar_hub.push(Registry(tmp_path / "older").add_folder(older))
    files = hub.repos["cifar-team/cifar10-classifier"].resolve(old.id)["files"]
    assert "model.keras" in files and not any(name.startswith("openvino/") for name in files), sorted(files)  # ...not its tag
    pulled = cifar_hub.pull(Registry(tmp_path / "fresh"), old.id)
    report = __import__("json").loads((pulled.path / runtime.FOLDER / "runtime.json").read_text())
    assert set(report["tried"]) >= {"int8"} and len(report["keras_answers"]) == 2000
