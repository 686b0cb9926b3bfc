"""Two replicas of the real app behind the real HAProxy (deploy/haproxy.cfg, as `python -m cifar
serve-cluster` runs it), sharing the local Hub-compatible server: clients stick to one replica
(gradio_client, the browser, Locust's distributed mode), a promotion and uploads made on one are
served and reviewed on the other, a retrain claimed elsewhere is refused, and a killed replica
leaves the balancer and comes back on an empty disk serving the current version."""
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

import httpx
import huggingface_hub.constants as hub_constants
import pytest
from chromium import open_page, wait_for_bars
from conftest import ROOT
from gradio_client import Client, handle_file
from hub_server import HubServer
from test_state_sync import app_state, some_images

from cifar import retrain_claim
from cifar.cluster import Cluster, free_port

TOKEN, MODELS = "hf_clustertoken1234567890", "team/cifar"
EXAMPLE = str(ROOT / "assets" / "examples" / "cat.png")
COPY = "20261201T000001Z-copy"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    if not shutil.which("haproxy"):
        pytest.fail("HAProxy is not installed: tests/run.sh installs Debian's haproxy as root")
    work = tmp_path_factory.mktemp("cluster")
    server = HubServer(token=TOKEN).start()
    env = {"HF_ENDPOINT": server.url, "HF_TOKEN": TOKEN, "HF_HUB_DISABLE_XET": "1", "HF_HOME": str(work / "hf"),
           "HF_REPO_ID": MODELS, "CIFAR_SYNC_SPACING_S": "1", "CIFAR_FOLLOW_S": "2"}
    with pytest.MonkeyPatch.context() as patch:  # this process reads the same Hub (the claim test)
        for name, value in env.items():
            patch.setenv(name, value)
        patch.setattr(hub_constants, "ENDPOINT", server.url)
        patch.setattr(hub_constants, "HUGGINGFACE_CO_URL_TEMPLATE", server.url + "/{repo_id}/resolve/{revision}/{filename}")
        patch.setattr(hub_constants, "HF_HUB_DISABLE_XET", True)
        running = Cluster(2, home=work / "homes", env=env)
        app_state(running.replicas[0].home, ("shipped", "1"))  # replica-1 holds a second version to promote
        running.start()
        try:
            yield running
        finally:
            running.stop()
            server.stop()


def replica_of(client: Client) -> str:
    return client.cookies["CIFAR_REPLICA"]


def test_each_client_sticks_to_one_replica_and_new_clients_are_spread(cluster):
    clients = [Client(cluster.url, verbose=False) for _ in range(4)]
    before = {r.name: r.health()["requests"].get("predict", 0) for r in cluster.replicas}
    for client in clients:
        for _ in range(3):  # upload, call and event stream of each reach the replica holding the file
            assert client.predict(handle_file(EXAMPLE), api_name="/predict")[0]["label"] == "cat"
    assert sorted(replica_of(c) for c in clients) == ["replica-1", "replica-1", "replica-2", "replica-2"]
    after = {r.name: r.health()["requests"].get("predict", 0) for r in cluster.replicas}
    assert {name: after[name] - before[name] for name in after} == {"replica-1": 6, "replica-2": 6}


def test_the_browser_works_through_the_balancer(cluster):
    with open_page(cluster.url) as page:
        page.locator("input[type='file']").first.set_input_files(EXAMPLE)  # an upload classifies it
        values = wait_for_bars(page, "cat")
        assert len(values) == 10 and max(values, key=values.get) == "cat"
        assert {c["name"]: c["value"] for c in page.context.cookies()}["CIFAR_REPLICA"] in ("replica-1", "replica-2")


# gradio_client keeps the balancer's cookie of its first answer: a user moved to the survivor while a
# replica was down goes back to it when it rejoins, and a call split across the two (upload on one,
# call on the other) fails there, its answer on an event stream nobody reads (RESULTS.md).
CALL_TIMEOUT_S = 20


class Predicting:
    """Four gradio_client users predicting through the balancer until stopped, each pausing
    THINK_S between calls (users, not a benchmark: loadtest/cluster.py measures the rate; unpaced,
    they took the cores from a replica restarting beside them); what each call answered, or how it
    failed, is kept."""

    THINK_S = 0.25

    def __init__(self, cluster: Cluster, users: int = 4):
        self.answers, self.failures, self._stop = [], [], threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(cluster.url,)) for _ in range(users)]
        [thread.start() for thread in self._threads]

    def _run(self, url: str) -> None:
        client = Client(url, verbose=False)
        while not self._stop.is_set():
            try:  # a deadline: a call whose answer went to another replica's event stream never ends
                job = client.submit(handle_file(EXAMPLE), api_name="/predict")
                self.answers.append(job.result(timeout=CALL_TIMEOUT_S)[0]["label"])
            except Exception as exc:  # counted, not raised: the test says how many may fail
                self.failures.append(repr(exc))
            self._stop.wait(self.THINK_S)

    def wait_for(self, more: int) -> None:
        """Until `more` further answers have come."""
        target = len(self.answers) + more
        while len(self.answers) < target:
            time.sleep(0.2)

    def stop(self) -> None:
        self._stop.set()
        [thread.join(60) for thread in self._threads]


def test_a_promotion_on_one_replica_is_served_by_every_replica_with_no_failed_request(cluster):
    load = Predicting(cluster)
    try:
        message = Client(cluster.replicas[0].url, verbose=False).predict(COPY, "", api_name="/rollback")[0]
        assert message == f"Version {COPY} is current now."
        deadline = time.time() + 300  # the goal is 60 s (loadtest/cluster.py measures it); this only stops a hang
        while {r.health()["version"] for r in cluster.replicas} != {COPY}:
            assert time.time() < deadline, [r.health() for r in cluster.replicas]
            time.sleep(0.5)
        load.wait_for(8)  # and it goes on serving after the swap
    finally:
        load.stop()
    assert load.failures == [] and set(load.answers) == {"cat"}
    assert "made current on another replica" in (cluster.replicas[1].home / "models" / "state.json").read_text()


def test_uploads_on_one_replica_reach_the_review_queue_of_the_other(cluster, tmp_path):
    uploader = Client(cluster.replicas[1].url, verbose=False)
    summary = uploader.predict([handle_file(str(p)) for p in some_images(tmp_path, 12, start=300)], api_name="/upload")[0]
    assert "**12 accepted**" in summary
    uploaded = {item["id"] for item in uploader.predict(100, "", "", api_name="/review_queue")}
    reviewer = Client(cluster.replicas[0].url, verbose=False)
    deadline = time.time() + 120
    while not uploaded <= {item["id"] for item in reviewer.predict(100, "", "", api_name="/review_queue")}:
        assert time.time() < deadline
        time.sleep(1)
    some = sorted(uploaded)[0]
    assert reviewer.predict(some, "ship", "", api_name="/label")["label"] == "ship"
    while uploader.predict(api_name="/monitoring")["hub"]["pending_uploads"]:  # nothing sent back twice
        assert time.time() < deadline
        time.sleep(1)


def test_a_retrain_claimed_by_another_replica_is_refused_with_who_and_since(cluster):
    claim = retrain_claim.acquire(MODELS, "replica-9", "job-elsewhere")
    try:
        client = Client(cluster.replicas[0].url, verbose=False)
        with pytest.raises(Exception, match="retraining on replica replica-9 since"):
            client.predict(0.9, 1, "", api_name="/retrain_start")
        other = Client(cluster.replicas[1].url, verbose=False)
        deadline = time.time() + 60
        while not other.predict(api_name="/monitoring")["retrain"].startswith("retraining on replica replica-9 since"):
            assert time.time() < deadline  # the other replica shows it too (Monitoring), once it has looked
            time.sleep(0.5)
        assert cluster.replicas[1].health()["retrain"].startswith("retraining on replica replica-9 since")
    finally:
        retrain_claim.release(MODELS, claim, "test over")


def test_locust_distributed_through_the_balancer_reports_each_replica(cluster, tmp_path):
    run = subprocess.run([sys.executable, "loadtest/run.py", "--host", cluster.url, "--users", "8", "--spawn-rate", "8",
                          "--duration", "4s", "--processes", "2", "--out", str(tmp_path), "--fail-on-error",
                          "--replica-urls", ",".join(r.url for r in cluster.replicas)],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    for replica in cluster.replicas:
        served = int(re.search(rf"{replica.name}: (\d+) predictions", run.stdout).group(1))
        assert served > 0, run.stdout


def test_a_killed_replica_leaves_the_balancer_and_rejoins_on_an_empty_disk(cluster):
    current = cluster.replicas[0].health()["version"]
    load = Predicting(cluster)
    victim = cluster.replicas[1]
    try:
        victim.kill()
        deadline = time.time() + 30
        while cluster.servers_up() != 1:
            assert time.time() < deadline, cluster.servers()
            time.sleep(0.2)
        load.wait_for(12)  # the survivor serves everyone
        assert len(load.failures) <= 4  # at most the calls in flight on the victim
        victim.start(empty_disk=True)
        victim.wait_ready()
        while cluster.servers_up() != 2:
            assert time.time() < deadline + 240, cluster.servers()
            time.sleep(0.5)
    finally:
        load.stop()
    assert victim.health()["version"] == current  # pulled from the Hub on an empty disk
    assert "restored from the Hub" in victim.log.read_text()


def test_serve_cluster_starts_replicas_and_the_balancer_and_stops_them(tmp_path):
    """Started as a shell's background job starts it (SIGINT ignored, inherited), Ctrl-C still
    stops the balancer and every replica: none is left running."""
    port = free_port()
    command = subprocess.Popen([sys.executable, "-m", "cifar", "serve-cluster", "--replicas", "1", "--port", str(port),
                                "--home", str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, env={**os.environ, "HF_REPO_ID": ""},
                               start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    said = []
    try:
        for line in command.stdout:
            said.append(line)
            if line.startswith("serving at"):
                break
        assert said[0].startswith("warning: HF_REPO_ID is not set"), said
        assert said[-1].startswith(f"serving at http://127.0.0.1:{port}"), said
        answer = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10)
        assert answer.json()["replica"] == "replica-1" and answer.cookies["CIFAR_REPLICA"] == "replica-1"
        replica_url = next(line.split()[1] for line in said if line.startswith("  replica-1: "))
        assert httpx.get(f"{replica_url}/healthz", timeout=10).json()["replica"] == "replica-1"
    finally:
        command.send_signal(signal.SIGINT)  # Ctrl-C stops the replicas and HAProxy
        try:
            command.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(command.pid, signal.SIGKILL)  # a failure here must not leave them running for later tests
            raise
    for url in (f"http://127.0.0.1:{port}", replica_url):
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"{url}/healthz", timeout=5)
