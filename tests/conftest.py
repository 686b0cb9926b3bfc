import json
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np
import pytest

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# One test-time view on every CPU (CIFAR_TTA, a setting users have too): the same level whatever
# the CPU, and a sixth of the work of 6 views in every retrain's judging, runtime check and
# estimates (most of a test retrain's time). The default by CPU has its own test in test_cpu.py;
# the shipped version's stored 6-view check and calibration, test_learning.py.
os.environ.setdefault("CIFAR_TTA", "0")

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "tests" / "artifacts"
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "loadtest"))

from run import App  # noqa: E402  (one way to start the app, shared with the load test)

from cifar import config, cpu  # noqa: E402

pytest_plugins = ["retrain_app"]  # the promotion tests' app and Hub, one per module that asks

# The longest modules first, every one of 5 s or more (wall seconds each took in the suite on the
# AMX machine, 2026-12-03, session 22: 75, 65, 61, 49, 48, 44, 43, 31, 31, 26, 25, 22, 22, 18, 18, 16,
# 12, 12, 9, 8): with two workers taking whole files, the run then ends on short files instead of one
# worker finishing a long one picked up late while the other idles. The two promotion modules first:
# side by side, their retrains share the cores (a retrain runs niced and, beside a file at normal
# priority, would wait behind it). xdist keeps this order only with --no-loadscope-reorder
# (tests/run.sh): by default it hands out the files with the most tests first.
LONGEST_FIRST = ("test_turned_down.py", "test_promotion.py", "test_cli.py", "test_state_sync.py", "test_cluster.py",
                 "test_runtime.py", "test_learning.py", "test_monitoring.py", "test_hub.py", "test_loadtest.py",
                 "test_serving.py", "test_bad_input.py", "test_faults.py", "test_retrain_shift.py",
                 "test_gradio_sessions.py", "test_bench_corruptions.py", "test_browser.py", "test_train.py",
                 "test_app_api.py", "test_deploy.py")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each file's own order kept


# Where the suite's time goes: the run is CPU-bound on 2 cores, so each file's CPU seconds (its
# worker's and those of every process the file started and waited for: apps, retrains, Chromium)
# are what to cut. Each worker writes its files' accounts; the summary prints the largest.
CPU_ACCOUNTS = ARTIFACTS / "cpu-by-file"
_account: dict = {}


def _cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _close_account() -> None:
    if _account:
        name = os.environ.get("PYTEST_XDIST_WORKER", "main")
        with open(CPU_ACCOUNTS / f"{name}.jsonl", "a") as out:
            out.write(json.dumps({"file": _account["file"], "cpu_s": _cpu_seconds() - _account["cpu"],
                                  "wall_s": time.time() - _account["wall"]}) + "\n")
        _account.clear()


def pytest_sessionstart(session):
    if not hasattr(session.config, "workerinput"):  # the controller (or a run without workers) starts afresh
        for old in CPU_ACCOUNTS.glob("*.jsonl"):
            old.unlink()
    CPU_ACCOUNTS.mkdir(parents=True, exist_ok=True)


def pytest_runtest_protocol(item, nextitem):
    name = item.nodeid.split("::")[0]
    if _account.get("file") != name:   # a file's module fixtures are torn down before the next file starts
        _close_account()
        _account.update(file=name, cpu=_cpu_seconds(), wall=time.time())


def pytest_sessionfinish(session):
    _close_account()


def pytest_terminal_summary(terminalreporter, config):
    if hasattr(config, "workerinput"):
        return
    rows = [json.loads(line) for path in CPU_ACCOUNTS.glob("*.jsonl") for line in path.read_text().splitlines()]
    if rows:
        rows.sort(key=lambda row: -row["cpu_s"])
        terminalreporter.write_sep("=", f"CPU by file (the largest 20): {sum(r['cpu_s'] for r in rows):.0f} s in all")
        for row in rows[:20]:
            terminalreporter.write_line(f"{row['cpu_s']:7.1f} s CPU {row['wall_s']:7.1f} s wall  {row['file']}")


@pytest.fixture(autouse=True)
def isolated_home(tmp_path, monkeypatch):
    """Each test writes its state into its own CIFAR_HOME."""
    monkeypatch.setenv("CIFAR_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("HF_REPO_ID", raising=False)
    monkeypatch.delenv("CIFAR_ADMIN_KEY", raising=False)


@pytest.fixture(scope="session")
def cifar_data() -> Path:
    """The CIFAR-10 folder; a test that needs it fails (never skips) where there is none."""
    folder = config.dataset_dir()
    if not (folder / "test").is_dir():
        pytest.fail(f"CIFAR-10 not found at {folder}: run `python -m cifar get-data` (downloads the official "
                    "release) or set CIFAR_DATA to a folder laid out as test/<class>/*.png", pytrace=False)
    return folder


@pytest.fixture(scope="session")
def test_split(cifar_data, tmp_path_factory):
    """The 10,000 test images, decoded once (the decoded cache in a home of its own)."""
    from cifar import data

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CIFAR_HOME", str(tmp_path_factory.mktemp("cache-home")))
        return data.load_folder(cifar_data, "test")


# Under a oneDNN ISA cap (the suite run as an older CPU would) OpenVINO is off by design
# (cifar.runtime.available): tests about OpenVINO itself skip there, saying so.
needs_openvino = pytest.mark.skipif(cpu.isa_capped(), reason="ONEDNN_MAX_CPU_ISA is set: OpenVINO is off by design")


def outside_holdout(x) -> np.ndarray:
    """Indices of the images in `x` (e.g. the test split) that the held-out set judging every new
    version does not hold, matched by their pixels: safe to upload or adapt on."""
    from cifar import data

    held = {image.tobytes() for image in data.holdout()[0]}
    return np.array([i for i in range(len(x)) if x[i].tobytes() not in held])


class AppProcess(App):
    """The real app (python app.py) on a free port with its own CIFAR_HOME."""

    def __init__(self, home: Path, env: dict | None = None):
        super().__init__(env, home=home)


@pytest.fixture(scope="module")
def app_server(tmp_path_factory):
    """The real app on a free port, on the shipped model: one per test module, so no module's
    uploads, labels or versions reach another's."""
    home = tmp_path_factory.mktemp("app") / "home"
    # One view, as the suite's other apps (CIFAR_TTA above): the shipped version carries its runtime
    # checks at every level for this CPU, so it starts without one; 6 views: tests/test_browser.py.
    app = AppProcess(home)
    yield app
    app.stop()
