import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("CIFAR_DATA", ROOT.parent / "shared" / "cifar10"))
ARTIFACTS = ROOT / "tests" / "artifacts"
sys.path.insert(0, str(ROOT))


@pytest.fixture(autouse=True)
def isolated_home(tmp_path, monkeypatch):
    """Each test writes its state into its own CIFAR_HOME."""
    monkeypatch.setenv("CIFAR_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("HF_REPO_ID", raising=False)
    monkeypatch.delenv("CIFAR_ADMIN_KEY", raising=False)


@pytest.fixture(scope="session")
def cifar_data() -> Path:
    if not (DATA / "test").is_dir():
        pytest.skip(f"CIFAR-10 folder not found at {DATA}")
    return DATA


@pytest.fixture(scope="session")
def test_split(cifar_data, tmp_path_factory):
    from cifar import data

    os.environ["CIFAR_HOME"] = str(tmp_path_factory.mktemp("cache-home"))
    return data.load_folder(cifar_data, "test")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class AppProcess:
    def __init__(self, home: Path, env: dict | None = None):
        self.home, self.port = home, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = home.parent / f"app-{self.port}.log"
        full_env = {**os.environ, "CIFAR_HOME": str(home), "GRADIO_ANALYTICS_ENABLED": "False", **(env or {})}
        self.proc = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--port", str(self.port)],
                                     cwd=ROOT, env=full_env, stdout=open(self.log, "w"), stderr=subprocess.STDOUT)
        self.wait_ready()

    def wait_ready(self, timeout: float = 180) -> None:
        import httpx

        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"app exited: {self.log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/gradio_api/info", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"app not ready: {self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@pytest.fixture(scope="session")
def app_server(tmp_path_factory):
    """The real app on a free port, started once for the session, on the shipped model."""
    home = tmp_path_factory.mktemp("app") / "home"
    app = AppProcess(home)
    yield app
    app.stop()


def pytest_configure(config):
    # Third-party deprecation noise (Keras on NumPy 2, httpx) hides the warnings that matter.
    config.addinivalue_line("filterwarnings", "ignore::DeprecationWarning:keras.*")
    config.addinivalue_line("filterwarnings", "ignore::DeprecationWarning:httpx2.*")
