"""Run the Locust load test headless and report it.

    python loadtest/run.py --users 32 --spawn-rate 8 --duration 60s
    python loadtest/run.py --compare-batching --ceiling  # (a) one image per call, (b) batched, Gradio alone
    python loadtest/run.py --compare                     # a plain Gradio Space with the same model, then the app
    python loadtest/run.py --host http://127.0.0.1:7860 --duration 15s --fail-on-error
    python loadtest/run.py --duration 10m                  # soak: reports memory after warm-up and at the end
    python loadtest/run.py --retrain-during --duration 90s # predictions while a retrain runs
    python loadtest/run.py --host http://127.0.0.1:7860 --processes 2 \
        --replica-urls http://127.0.0.1:7861,http://127.0.0.1:7862   # a cluster, per replica

Without --host it starts the app (on the shipped model, in a temporary CIFAR_HOME) on a free
port and stops it afterwards. Writes Locust's CSV and HTML report and a PNG of throughput and
latency over time into --out, and prints a one-line summary per run.
"""
import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from cifar import cpu  # noqa: E402  (no TensorFlow import: just /proc/cpuinfo)
from cifar.cluster import free_port  # noqa: E402  (no TensorFlow either)

LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"


class App:
    """The app in a subprocess on a free port (also the test suite's way to start it)."""

    def __init__(self, env: dict | None = None, home=None, timeout: float = 600, script: Path = ROOT / "app.py"):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.home = Path(home or tempfile.mkdtemp(prefix="cifar-loadtest-"))
        self.home.mkdir(parents=True, exist_ok=True)
        self.log = self.home.parent / f"app-{self.port}.log"
        self.started = time.time()
        with open(self.log, "w") as log:  # the child keeps its own copy of the file
            self.proc = subprocess.Popen([sys.executable, str(script), "--port", str(self.port)], cwd=ROOT,
                                         env={**os.environ, "CIFAR_HOME": str(self.home),
                                              "GRADIO_ANALYTICS_ENABLED": "False", **(env or {})},
                                         stdout=log, stderr=subprocess.STDOUT)
        # The app adds /healthz last, after Gradio's routes answer: ready means that one answers.
        self._wait_ready(timeout, "/healthz" if Path(script) == ROOT / "app.py" else "/gradio_api/info")
        self.ready_seconds = time.time() - self.started

    def _wait_ready(self, timeout: float, path: str) -> None:
        import httpx

        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the app exited: {self.log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}{path}", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.3)
        self.stop()
        raise TimeoutError(f"the app was not ready in {timeout:.0f} s: {self.log.read_text()[-3000:]}")

    def rss_mb(self) -> float:
        import psutil

        return psutil.Process(self.proc.pid).memory_info().rss / 2**20

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def run_locust(host: str, users: int, spawn_rate: float, duration: str, out: Path, label: str,
               processes: int = 1) -> Path:
    """Locust headless; with `processes` > 1 in its distributed mode (a master and that many
    worker processes on this machine; across machines: see the README's load test)."""
    out.mkdir(parents=True, exist_ok=True)
    prefix = out / label
    subprocess.run([sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "-u", str(users),
                    "-r", str(spawn_rate), "-t", duration, "--host", host, "--csv", str(prefix),
                    "--csv-full-history", "--html", str(out / f"{label}.html"), "--only-summary",
                    "--stop-timeout", "10", "--loglevel", "WARNING",
                    *(["--processes", str(processes)] if processes > 1 else [])], check=False)
    return prefix


def served_per_replica(urls: list[str]) -> dict[str, int]:
    """Predictions (single and batch images) each replica has answered so far, from its /healthz."""
    import httpx

    counts = {}
    for url in urls:
        health = httpx.get(f"{url}/healthz", timeout=10).json()
        counts[health["replica"]] = sum(health["requests"].get(name, 0) for name in ("predict", "predict_batch"))
    return counts


def replica_report(before: dict[str, int], after: dict[str, int]) -> str:
    served = {name: after[name] - before.get(name, 0) for name in after}
    total = max(1, sum(served.values()))
    return "; ".join(f"{name}: {count} predictions ({100 * count / total:.0f}%)" for name, count in served.items())


def read_stats(prefix: Path) -> dict[str, dict]:
    with open(f"{prefix}_stats.csv") as handle:
        return {row["Name"]: row for row in csv.DictReader(handle)}


def plot_history(prefix: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(f"{prefix}_stats_history.csv") as handle:
        rows = [r for r in csv.DictReader(handle) if r["Name"] == "Aggregated"]
    start = int(rows[0]["Timestamp"]) if rows else 0
    t = [int(r["Timestamp"]) - start for r in rows]
    number = lambda r, k: float(r[k]) if r[k] not in ("", "N/A") else float("nan")
    fig, (rate, latency) = plt.subplots(2, 1, figsize=(8, 5.5), sharex=True)
    rate.plot(t, [number(r, "Requests/s") for r in rows], label="HTTP requests/s")
    rate.plot(t, [number(r, "Failures/s") for r in rows], label="failures/s", color="red")
    rate.set_ylabel("per second"), rate.legend(), rate.grid(alpha=0.3)
    for key in ("50%", "95%", "99%"):
        latency.plot(t, [number(r, key) for r in rows], label=f"p{key[:-1]}")
    latency.set_ylabel("ms (HTTP requests)"), latency.set_xlabel("seconds"), latency.legend(), latency.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    path = Path(f"{prefix}_over_time.png")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def summarize(stats: dict[str, dict], label: str) -> tuple[str, dict]:
    flow = stats.get("predict round trip", {})
    total = stats["Aggregated"]
    failures = sum(int(r["Failure Count"]) for name, r in stats.items() if name != "Aggregated")
    numbers = {"predict_rps": float(flow.get("Requests/s", 0) or 0), "p50": flow.get("50%"), "p95": flow.get("95%"),
               "p99": flow.get("99%"), "failures": failures, "http_rps": float(total["Requests/s"])}
    line = (f"{label}: predict round trips {numbers['predict_rps']:.1f}/s, p50 {numbers['p50']} ms, "
            f"p95 {numbers['p95']} ms, p99 {numbers['p99']} ms; all HTTP requests {numbers['http_rps']:.1f}/s; "
            f"failures {failures}")
    return line, numbers


class MemorySampler:
    """Resident memory of the app every few seconds, to tell warm-up from growth."""

    def __init__(self, app: App, every: float = 5.0):
        import threading

        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(app, every), daemon=True)
        self._thread.start()

    def _run(self, app: App, every: float) -> None:
        started = time.time()
        while not self._stop.wait(every):
            try:
                self.samples.append((time.time() - started, app.rss_mb()))
            except Exception:  # the process is gone
                return

    def stop(self) -> str:
        self._stop.set()
        self._thread.join()
        if len(self.samples) < 4:
            return ""
        warm = next((mb for t, mb in self.samples if t >= min(60.0, self.samples[-1][0] / 4)), self.samples[0][1])
        end = self.samples[-1][1]
        return f"RSS after warm-up {warm:.0f} MB -> end {end:.0f} MB ({100 * (end - warm) / warm:+.1f}%)"


def retrain_during(host: str, delay: float):
    """Upload 200 labeled test images and start one retrain while the load runs."""
    import threading

    def run():
        from gradio_client import Client, handle_file
        from PIL import Image

        time.sleep(delay)
        folder = Path(tempfile.mkdtemp(prefix="retrain-during-"))
        names = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
        files = []
        for i in range(200):
            files.append(folder / f"{names[i % 10]}_{i}.png")
            Image.effect_noise((32, 32), 40 + i % 30).convert("RGB").save(files[-1])
        client = Client(host, verbose=False)
        client.predict([handle_file(str(f)) for f in files], api_name="/upload")
        started = time.time()
        message = client.predict(0.9, 2, os.environ.get("CIFAR_ADMIN_KEY", ""), api_name="/retrain")[0]
        print(f"retrain during the load: {time.time() - started:.0f} s; {message.splitlines()[0]}", flush=True)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def serving(host: str) -> str:
    """What ran the network and at which test-time levels, from the app's /monitoring endpoint
    (a plain Gradio Space has none: it calls Keras' model.predict)."""
    from gradio_client import Client

    try:
        field = Client(host, verbose=False).predict(api_name="/monitoring")
    except Exception:
        return "Keras model.predict per request (no /monitoring)"
    levels = ", ".join(f"level {level}: {count}" for level, count in sorted(field.get("tta_levels", {}).items()))
    return f"{field['runtime']}; predictions by TTA level: {levels or 'none batched'}"


def one_run(args, label: str, app_env: dict | None, script: Path = ROOT / "app.py") -> dict:
    app = None if args.host else App(app_env, script=script)
    host = args.host or app.url
    memory = MemorySampler(app) if app else None
    replicas = [url for url in (args.replica_urls or "").split(",") if url]
    try:
        before = served_per_replica(replicas)
        retrain = retrain_during(host, delay=5.0) if args.retrain_during else None
        prefix = run_locust(host, args.users, args.spawn_rate, args.duration, args.out, label, args.processes)
        if retrain:
            retrain.join(600)  # report how it ended before the app stops
        served_by = serving(host)
        per_replica = replica_report(before, served_per_replica(replicas)) if replicas else ""
    finally:
        memory_line = memory.stop() if memory else ""
        if app:
            app.stop()
    plot_history(prefix, f"{label}: {args.users} users, {args.duration}")
    line, numbers = summarize(read_stats(prefix), label)
    if app:
        line += f"; app ready in {app.ready_seconds:.1f} s; {memory_line}"
    print(line + f"\n  served by {served_by}" + (f"\n  per replica: {per_replica}" if per_replica else ""), flush=True)
    return numbers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", help="an app already running (default: start one)")
    parser.add_argument("--users", type=int, default=32)
    parser.add_argument("--spawn-rate", type=float, default=8)
    parser.add_argument("--duration", default="60s")
    parser.add_argument("--out", type=Path, default=ROOT / "loadtest" / "results" /
                        datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ"))
    parser.add_argument("--compare-batching", action="store_true",
                        help="run twice: CIFAR_MAX_BATCH=1 (one image per call), then batched")
    parser.add_argument("--ceiling", action="store_true",
                        help="with --compare-batching: also run the same load against loadtest/ceiling_app.py "
                             "(Gradio with no work behind it)")
    parser.add_argument("--compare", action="store_true",
                        help="run the same load against loadtest/plain_space.py (a plain Gradio Space with the "
                             "same model) and then the app, and print the ratio")
    parser.add_argument("--processes", type=int, default=1,
                        help="Locust's distributed mode: this many worker processes (one load generator is one core)")
    parser.add_argument("--replica-urls", help="with --host at a balancer: the replicas' own URLs, comma-separated, "
                                               "to report how many predictions each served")
    parser.add_argument("--fail-on-error", action="store_true", help="exit 1 if any request failed")
    parser.add_argument("--retrain-during", action="store_true",
                        help="upload 200 images and run a retrain while the load runs")
    args = parser.parse_args()
    if args.ceiling and not args.compare_batching:
        sys.exit("--ceiling is measured beside the app's own runs: add --compare-batching")
    if args.compare:
        if args.host:
            sys.exit("--compare starts its own apps; leave out --host")
        plain = one_run(args, "plain-space", None, script=ROOT / "loadtest" / "plain_space.py")
        app = one_run(args, "app", None)
        print(f"app / plain Space predict throughput: "
              f"{app['predict_rps'] / max(plain['predict_rps'], 1e-9):.2f}x", flush=True)
        failures = plain["failures"] + app["failures"]
    elif args.compare_batching:
        if args.host:
            sys.exit("--compare-batching starts its own apps; leave out --host")
        unbatched = one_run(args, "unbatched", {"CIFAR_MAX_BATCH": "1"})
        batched = one_run(args, "batched", {"CIFAR_MAX_BATCH": "32"})
        ratio = batched["predict_rps"] / max(unbatched["predict_rps"], 1e-9)
        print(f"batched / unbatched predict throughput: {ratio:.2f}x", flush=True)
        failures = unbatched["failures"] + batched["failures"]
        if args.ceiling:
            ceiling = one_run(args, "ceiling", None, script=ROOT / "loadtest" / "ceiling_app.py")
            print(f"Gradio's ceiling (no work behind the API): {ceiling['predict_rps']:.1f} predictions/s = "
                  f"{ceiling['predict_rps'] / max(unbatched['predict_rps'], 1e-9):.2f}x the unbatched app", flush=True)
    else:
        failures = one_run(args, "run", None)["failures"]
    print(f"reports in {args.out}")
    print(f"CPU: {cpu.describe()}; TTA level {cpu.tta_level()} when the queue is short")
    if args.fail_on_error and failures:
        sys.exit(1)


if __name__ == "__main__":
    main()
