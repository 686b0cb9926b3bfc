"""Several replicas of the app behind HAProxy on one machine: `python -m cifar serve-cluster`.

For trying a deployment out and for measuring one (loadtest/cluster.py). Each replica is
`python app.py` on its own port with its own CIFAR_HOME (its own disk, as on separate machines)
and its own CIFAR_REPLICA name; they share the Hub repositories of the environment (HF_REPO_ID,
HF_DATASET_ID, HF_TOKEN), which is how they share versions, uploads, labels and the retrain
(cifar.state_sync). HAProxy runs deploy/haproxy.cfg with this cluster's ports and servers.
"""
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from . import config

HAPROXY_CONFIG = config.ROOT / "deploy" / "haproxy.cfg"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def haproxy_config(port: int, stats_port: int, replicas: list[tuple[str, int]], host: str = "127.0.0.1") -> str:
    """deploy/haproxy.cfg with this cluster's listening ports and one server line per replica."""
    text = HAPROXY_CONFIG.read_text()
    servers = "".join(f"    server {name} 127.0.0.1:{p} check cookie {name}\n" for name, p in replicas)
    text = re.sub(r"(?m)^    server .*\n", "", text)
    text = re.sub(r"(?m)^(    default-server .*\n)", lambda m: m.group(1) + servers, text)
    text = text.replace("bind 127.0.0.1:7860", f"bind {host}:{port}")
    return text.replace("bind 127.0.0.1:7869", f"bind 127.0.0.1:{stats_port}")


def balancer_servers(stats_port: int) -> dict[str, dict]:
    """HAProxy's own view (its stats page), per replica: status ("UP", "DOWN", or on its way:
    "UP 1/2"), sessions, HTTP responses; {} while it does not answer."""
    try:
        text = httpx.get(f"http://127.0.0.1:{stats_port}/stats;csv", timeout=2).text
    except httpx.HTTPError:
        return {}
    header, *rows = [line.split(",") for line in text.lstrip("# ").splitlines() if line]
    table = [dict(zip(header, row)) for row in rows]
    return {row["svname"]: row for row in table if row["pxname"] == "replicas" and row["svname"].startswith("replica")}


class Replica:
    def __init__(self, name: str, port: int, home: Path, env: dict):
        self.name, self.port, self.home, self.env = name, port, Path(home), env
        self.url = f"http://127.0.0.1:{port}"
        self.log = self.home.parent / f"{name}.log"
        self.proc: subprocess.Popen | None = None

    def start(self, empty_disk: bool = False) -> None:
        if empty_disk:
            shutil.rmtree(self.home, ignore_errors=True)
        self.home.mkdir(parents=True, exist_ok=True)
        with open(self.log, "a") as log:
            self.proc = subprocess.Popen(
                [sys.executable, str(config.ROOT / "app.py"), "--port", str(self.port)], cwd=config.ROOT,
                env={**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "GRADIO_TEMP_DIR": str(self.gradio_cache()),
                     **self.env, "CIFAR_HOME": str(self.home), "CIFAR_REPLICA": self.name},
                stdout=log, stderr=subprocess.STDOUT)

    def gradio_cache(self) -> Path:
        """Where Gradio keeps the files of each call: in memory where the machine has a tmpfs
        (/dev/shm). Every prediction's upload is written, renamed and looked up there from
        Gradio's event loop; on tmpfs that costs less, measured: loadtest/cluster.py in RESULTS.md."""
        shm = Path("/dev/shm")  # a container's is often 64 MB: only where there is room
        roomy = shm.is_dir() and os.access(shm, os.W_OK) and shutil.disk_usage(shm).free >= 2**30
        root = shm if roomy else self.home.parent
        return root / f"cifar-gradio-{self.port}-{self.name}"

    def health(self, timeout: float = 2.0) -> dict | None:
        try:
            answer = httpx.get(f"{self.url}/healthz", timeout=timeout)
            return answer.json() if answer.status_code == 200 else None
        except (httpx.HTTPError, ValueError):
            return None

    def wait_ready(self, timeout: float = 240) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"replica {self.name} exited: {self.log.read_text()[-2000:]}")
            if self.health():
                return
            time.sleep(0.5)
        raise TimeoutError(f"replica {self.name} not ready in {timeout:.0f} s: {self.log.read_text()[-2000:]}")

    def kill(self) -> None:
        """SIGKILL, as a crashed machine: nothing is flushed or said goodbye to."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()
        shutil.rmtree(self.gradio_cache(), ignore_errors=True)


class Cluster:
    """`replicas` app processes and HAProxy in front of them; `url` is the balancer."""

    def __init__(self, replicas: int, port: int | None = None, home: Path | None = None, env: dict | None = None,
                 host: str = "127.0.0.1"):
        self.port = port or free_port()
        self.stats_port = free_port()
        self.host = host
        self.url = f"http://127.0.0.1:{self.port}"
        self.home = Path(home or tempfile.mkdtemp(prefix="cifar-cluster-"))
        self.replicas = [Replica(f"replica-{i + 1}", free_port(), self.home / f"replica-{i + 1}", env or {})
                         for i in range(replicas)]
        self.haproxy: subprocess.Popen | None = None

    def start(self, timeout: float = 300) -> "Cluster":
        if not shutil.which("haproxy"):
            raise RuntimeError("HAProxy is not installed (Debian: apt install haproxy)")
        for replica in self.replicas:
            replica.start()
        try:
            for replica in self.replicas:
                replica.wait_ready(timeout)
            self.config_path = self.home / "haproxy.cfg"
            self.config_path.write_text(haproxy_config(self.port, self.stats_port,
                                                       [(r.name, r.port) for r in self.replicas], self.host))
            with open(self.home / "haproxy.log", "a") as log:
                self.haproxy = subprocess.Popen(["haproxy", "-db", "-f", str(self.config_path)],
                                                stdout=log, stderr=subprocess.STDOUT)
            self._wait_balancer(timeout=30)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_balancer(self, timeout: float) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.haproxy.poll() is not None:
                raise RuntimeError(f"HAProxy exited: {(self.home / 'haproxy.log').read_text()[-2000:]}")
            if self.servers_up() == len(self.replicas):
                return
            time.sleep(0.3)
        raise TimeoutError("HAProxy did not see every replica healthy")

    def servers(self) -> dict[str, dict]:
        return balancer_servers(self.stats_port)

    def servers_up(self) -> int:
        return sum(row["status"] == "UP" for row in self.servers().values())

    def stop(self) -> None:
        for replica in self.replicas:
            replica.stop()
        if self.haproxy and self.haproxy.poll() is None:
            self.haproxy.send_signal(signal.SIGTERM)
            self.haproxy.wait(10)
