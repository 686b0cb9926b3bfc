"""Replicas behind HAProxy on this machine, measured in one run (the local Hub-compatible server of
the tests stands in for the Hub the replicas share):

    python loadtest/cluster.py [--users 32 --duration 30s --replicas 1,2,3 --processes 1]
    python loadtest/cluster.py --replicas 1,2 --no-faults --env CIFAR_TTA=0   # what a setting buys

1. Locust (32 users, no wait) against 1 replica direct, then against HAProxy with 1, 2 and 3
   replicas: predictions/s, p95, failures, and how many predictions each replica served.
2. With 2 replicas under the same load: a rollback made on replica-1; seconds until every
   replica serves it, and failed requests meanwhile.
3. With 2 replicas under the same load: replica-2 killed (SIGKILL); seconds until HAProxy stops
   sending it requests, failed requests (only those in flight on it should fail), then it is
   started again on an empty disk: seconds until it is back in the balancer, and the version it serves.
4. The Hub calls the 2 replicas make in a minute when nothing changes, counted at the server.
"""
import argparse
import collections
import contextlib
import csv
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
from run import ROOT, read_stats, replica_report, run_locust, served_per_replica, summarize

sys.path.insert(0, str(ROOT / "tests"))
from hub_server import HubServer

from cifar import config, cpu
from cifar.cluster import Cluster
from cifar.registry import Registry

TOKEN, MODELS = "hf_clusterbenchtoken12345", "bench/cifar"
COPY = "20261201T000001Z-copy"


def seed_second_version(home: Path) -> None:
    """replica-1's disk holds a second version (a copy of the shipped one) to roll back and forth."""
    registry = Registry(home / "models")
    registry.seed_from(config.shipped_models_dir())
    registry.add_folder(registry.current().path, version_id=COPY)


def failures(prefix: Path) -> tuple[int, int, list[str]]:
    """Failed round trips (what a user sees fail), failed HTTP requests, and the errors, of a run."""
    with open(f"{prefix}_failures.csv") as handle:
        rows = list(csv.DictReader(handle))
    flows = sum(int(row["Occurrences"]) for row in rows if row["Method"] == "FLOW")
    http = sum(int(row["Occurrences"]) for row in rows if row["Method"] != "FLOW")
    return flows, http, sorted({row["Error"][:120] for row in rows})


class CpuShares:
    """Each process's share of a core (percent) while the load runs: replicas, HAProxy, Locust; and
    each replica's memory (RSS) at the end."""

    def __init__(self, cluster: Cluster, every: float = 2.0):
        self.cluster, self.samples, self._stop = cluster, collections.defaultdict(list), threading.Event()
        self._thread = threading.Thread(target=self._run, args=(every,), daemon=True)
        self._thread.start()

    def _processes(self) -> dict[str, psutil.Process]:
        named = {r.name: psutil.Process(r.proc.pid) for r in self.cluster.replicas if r.proc.poll() is None}
        named["HAProxy"] = psutil.Process(self.cluster.haproxy.pid)
        for process in psutil.process_iter(["cmdline"]):
            if "locust" in " ".join(process.info["cmdline"] or []):
                named[f"Locust {process.pid}"] = process
        return named

    def _run(self, every: float) -> None:
        processes: dict[str, psutil.Process] = {}
        while not self._stop.wait(every):
            tick: dict[str, float] = collections.defaultdict(float)
            for name, process in processes.items():
                with contextlib.suppress(psutil.NoSuchProcess):
                    tick[name.split(" ")[0]] += process.cpu_percent()  # Locust's processes summed
            for name, values in tick.items():
                self.samples[name].append(values)
            for name, process in self._processes().items():  # Locust's processes start after this does
                if name not in processes:
                    process.cpu_percent()  # the first call only starts the count
                    processes[name] = process

    def stop(self) -> str:
        self._stop.set()
        self._thread.join()
        memory = ", ".join(f"{r.name} {psutil.Process(r.proc.pid).memory_info().rss / 2**20:.0f} MB"
                           for r in self.cluster.replicas if r.proc.poll() is None)
        steady = {name: values[2:-1] or values for name, values in self.samples.items()}  # not the ramp-up
        shares = ", ".join(f"{name} {sum(values) / len(values):.0f}%" for name, values in steady.items() if values)
        return f"{shares} (of {100 * os.cpu_count()}%); memory: {memory}"


def load(args, cluster: Cluster, url: str, label: str) -> dict:
    replicas = [r.url for r in cluster.replicas]
    before = served_per_replica(replicas)
    shares = CpuShares(cluster)
    prefix = run_locust(url, args.users, args.spawn_rate, args.duration, args.out, label, args.processes)
    line, numbers = summarize(read_stats(prefix), label)
    print(f"{line}\n  per replica: {replica_report(before, served_per_replica(replicas))}\n  CPU: {shares.stop()}",
          flush=True)
    return numbers


def in_background(args, url: str, label: str) -> threading.Thread:
    thread = threading.Thread(target=run_locust, daemon=True,
                              args=(url, args.users, args.spawn_rate, args.long_duration, args.out, label, args.processes))
    thread.start()
    time.sleep(8)  # every user has started
    return thread


def promotion_under_load(args, cluster: Cluster) -> None:
    from gradio_client import Client

    load_thread = in_background(args, cluster.url, "promotion")
    started = time.time()
    Client(cluster.replicas[0].url, verbose=False).predict(COPY, os.environ.get("CIFAR_ADMIN_KEY", ""),
                                                           api_name="/rollback")
    seen = {}
    while len(seen) < len(cluster.replicas) and time.time() - started < 180:
        for replica in cluster.replicas:
            if replica.name not in seen and (replica.health() or {}).get("version") == COPY:
                seen[replica.name] = time.time() - started
        time.sleep(0.2)
    load_thread.join()
    flows, http, _ = failures(args.out / "promotion")
    line, _ = summarize(read_stats(args.out / "promotion"), "the run around it")
    print("promotion made on replica-1 under load: served by " +
          ", ".join(f"{name} after {seconds:.1f} s" for name, seconds in seen.items()) +
          f"; failed round trips during the run: {flows} (HTTP requests: {http})\n  {line}", flush=True)


def kill_under_load(args, cluster: Cluster) -> None:
    load_thread = in_background(args, cluster.url, "kill")
    victim = cluster.replicas[-1]
    sessions = int(cluster.servers()[victim.name]["scur"])  # its connections in flight as it dies
    killed = time.time()
    victim.kill()
    while cluster.servers().get(victim.name, {}).get("status", "").startswith("UP"):  # "UP 1/2": going down
        time.sleep(0.1)
    out_after = time.time() - killed
    restarted = time.time()
    victim.start(empty_disk=True)
    victim.wait_ready()
    while cluster.servers().get(victim.name, {}).get("status") != "UP":
        time.sleep(0.2)
    back_after = time.time() - restarted
    load_thread.join()
    flows, http, errors = failures(args.out / "kill")
    line, _ = summarize(read_stats(args.out / "kill"), "the run around it")
    print(f"{victim.name} killed under load ({sessions} connections open on it): out of HAProxy after {out_after:.1f} s; "
          f"failed round trips in the whole run: {flows} (HTTP requests: {http}; {'; '.join(errors)}); started again on "
          f"an empty disk: back in the balancer after {back_after:.1f} s, serving {victim.health()['version']} "
          f"(current: {cluster.replicas[0].health()['version']})\n  {line}", flush=True)


def quiet_hub_calls(server: HubServer, replicas: int, seconds: float = 60.0) -> None:
    """The Hub calls replicas make when nothing changes (following each other), counted at the server."""
    server.requests.clear()
    time.sleep(seconds)
    calls = list(server.requests)
    api = sum(path.startswith("/api/") for _, path, _ in calls)
    per_hour = 3600 / seconds / replicas
    print(f"Hub calls while nothing changes: {len(calls)} in {seconds:.0f} s from {replicas} replicas: "
          f"{api * per_hour:.0f} API calls and {(len(calls) - api) * per_hour:.0f} file reads an hour per replica "
          f"(CIFAR_FOLLOW_S={config.follow_seconds():.0f})", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=32)
    parser.add_argument("--spawn-rate", type=float, default=8)
    parser.add_argument("--duration", default="30s")
    parser.add_argument("--long-duration", default="60s", help="the load around the promotion and the kill")
    parser.add_argument("--replicas", default="1,2,3", help="cluster sizes to measure behind HAProxy")
    parser.add_argument("--processes", type=int, default=1, help="Locust worker processes")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="a setting for every replica (repeatable), e.g. CIFAR_TTA=0 to price a setting")
    parser.add_argument("--no-faults", action="store_true", help="only the loads: no promotion, kill or Hub count")
    parser.add_argument("--out", type=Path, default=ROOT / "loadtest" / "results" / f"cluster-{time.strftime('%Y%m%dT%H%M%SZ')}")
    args = parser.parse_args()
    server = HubServer(token=TOKEN).start()
    work = Path(tempfile.mkdtemp(prefix="cluster-bench-"))
    env = {"HF_ENDPOINT": server.url, "HF_TOKEN": TOKEN, "HF_HUB_DISABLE_XET": "1", "HF_HOME": str(work / "hf")}
    print(f"CPU: {cpu.describe()}; {os.cpu_count()} cores; Locust: {args.users} users, no wait, {args.duration}, "
          f"{args.processes} process(es); replicas' settings: {' '.join(args.env) or 'as shipped'}", flush=True)
    direct = None
    try:
        for count in [int(n) for n in args.replicas.split(",")]:
            settings = dict(item.split("=", 1) for item in args.env)
            cluster = Cluster(count, home=work / f"cluster-{count}",
                              env={**env, **settings, "HF_REPO_ID": f"{MODELS}-{count}"})
            seed_second_version(cluster.replicas[0].home)
            cluster.start()
            try:
                if count == 1:
                    direct = load(args, cluster, cluster.replicas[0].url, "1 replica direct")
                balanced = load(args, cluster, cluster.url, f"{count} replica(s) behind HAProxy")
                if direct:
                    print(f"  = {balanced['predict_rps'] / max(direct['predict_rps'], 1e-9):.2f}x one replica direct",
                          flush=True)
                if count == 2 and not args.no_faults:
                    promotion_under_load(args, cluster)
                    kill_under_load(args, cluster)
                    quiet_hub_calls(server, count)
            finally:
                cluster.stop()
    finally:
        server.stop()
    print(f"reports in {args.out}")


if __name__ == "__main__":
    main()
