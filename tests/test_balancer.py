"""deploy/haproxy.cfg's routing, on the real HAProxy with three small HTTP servers standing in for
replicas (each answers with its name): what a client sees when its replica dies. gradio_client
keeps the cookie of its first answer for good (it ignores a later Set-Cookie of a name it has), so
after its replica dies it keeps naming it; every request of one call must still reach one
replica, or its upload, POST and event stream are split."""
import shutil
import signal
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from cifar.cluster import balancer_servers, free_port, haproxy_config


class Named(BaseHTTPRequestHandler):
    def do_GET(self):  # http.server calls it by this name
        body = self.server.name.encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        pass  # HAProxy's health checks hang up without reading the answer


def serve(name: str) -> Server:
    server = Server(("127.0.0.1", 0), Named)
    server.name = name
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture
def balancer(tmp_path):
    if not shutil.which("haproxy"):
        pytest.fail("HAProxy is not installed: tests/run.sh installs Debian's haproxy as root")
    replicas = {f"replica-{i}": serve(f"replica-{i}") for i in (1, 2, 3)}
    port, stats = free_port(), free_port()
    config = tmp_path / "haproxy.cfg"
    config.write_text(haproxy_config(port, stats, [(name, s.server_address[1]) for name, s in replicas.items()]))
    proxy = subprocess.Popen(["haproxy", "-db", "-f", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: set(statuses(stats).values()) == {"UP"}, "HAProxy never saw the three replicas healthy")
        yield url, stats, replicas
    finally:
        proxy.send_signal(signal.SIGTERM)
        proxy.wait(10)
        for server in replicas.values():
            server.shutdown()
            server.server_close()


def statuses(stats_port: int) -> dict[str, str]:
    return {name: row["status"] for name, row in balancer_servers(stats_port).items()}


def wait_until(condition, message: str, timeout: float = 30) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, message
        time.sleep(0.2)


def answered_by(url: str, cookies: dict | None = None, count: int = 12) -> list[str]:
    """Who answers `count` requests, each on a new connection, sent as gradio_client sends them."""
    return [httpx.get(f"{url}/healthz", cookies=cookies or {}, timeout=5).text for _ in range(count)]


def test_new_clients_are_spread_and_each_keeps_its_replica(balancer):
    url, _, _ = balancer
    first = [httpx.get(f"{url}/healthz", timeout=5) for _ in range(3)]
    assert sorted(answer.text for answer in first) == ["replica-1", "replica-2", "replica-3"]
    for answer in first:
        assert answer.cookies["CIFAR_REPLICA"] == answer.text
        assert set(answered_by(url, {"CIFAR_REPLICA": answer.text})) == {answer.text}


def test_a_client_whose_replica_died_has_all_its_requests_on_one_other_replica(balancer):
    url, stats, replicas = balancer
    replicas["replica-1"].shutdown()
    replicas["replica-1"].server_close()
    wait_until(lambda: statuses(stats)["replica-1"] == "DOWN", "HAProxy never took the dead replica out")
    moved = answered_by(url, {"CIFAR_REPLICA": "replica-1"})
    assert len(set(moved)) == 1 and moved[0] in {"replica-2", "replica-3"}, moved
    assert set(answered_by(url, count=6)) == {"replica-2", "replica-3"}  # new clients still spread
