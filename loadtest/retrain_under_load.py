"""A retrain started while the API is busy: does its caller get the result, and what does serving keep?

    python loadtest/retrain_under_load.py --runs 3            # ~5 minutes a run on 2 cores

Each run starts the app on a fresh CIFAR_HOME and uploads 1,000 unlabeled CIFAR-10 test images.
Then, with the same Locust load as loadtest/run.py (32 users, no wait, every call a new Gradio
session, as any HTTP client makes them):
  1. `--before` seconds without a retrain: predictions/s, p95, failures;
  2. a retrain through gradio_client's /retrain (the call that waits for the result) 3 s into a
     second load, /retrain_status asked every second meanwhile; the load stops when the retrain
     answers: predictions/s, p95 and failures during it, the caller's outcome, the slowest status answer.
Prints one line per phase, a verdict per run and the CPU; Locust's files go to --out.
"""
import argparse
import signal
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

from run import LOCUSTFILE, ROOT, App, read_stats, summarize  # loadtest/run.py: it puts the repository on sys.path

from cifar import cpu


def upload_test_images(host: str, count: int) -> int:
    from gradio_client import Client, handle_file
    from PIL import Image

    from cifar import config, data

    x, y = data.load_folder(config.dataset_dir(), "test")
    folder = Path(tempfile.mkdtemp(prefix="retrain-under-load-"))
    files = []
    for i in data.balanced_subset(y, count // 10, seed=3):
        files.append(folder / f"img{i}.png")  # plain names: unlabeled, pseudo-labeled by the retrain
        Image.fromarray(x[i]).save(files[-1])
    Client(host, verbose=False).predict([handle_file(str(f)) for f in files], api_name="/upload")
    return len(files)


def locust(host: str, users: int, duration: str, prefix: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "-u", str(users),
                             "-r", str(users), "-t", duration, "--host", host, "--csv", str(prefix),
                             "--only-summary", "--stop-timeout", "10", "--loglevel", "WARNING"])


class StatusPoller:
    """The retrain's status every second, timed, both ways: GET /api/retrain_status (plain HTTP,
    outside Gradio's queue) and gradio_client's /retrain_status (through the queue)."""

    def __init__(self, host: str):
        import httpx
        from gradio_client import Client

        self.http, self.client = httpx.Client(base_url=host, timeout=30), Client(host, verbose=False)
        self.latencies: dict[str, list[float]] = {"GET /api/retrain_status": [], "gradio_client /retrain_status": []}
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _timed(self, name: str, call) -> None:
        started = time.perf_counter()
        try:
            call()
            self.latencies[name].append(time.perf_counter() - started)
        except Exception as exc:  # counted: the endpoint must answer throughout
            self.errors.append(f"{name}: {exc!r}"[:200])

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            self._timed("GET /api/retrain_status", lambda: self.http.get("/api/retrain_status").raise_for_status())
            self._timed("gradio_client /retrain_status", lambda: self.client.predict("", api_name="/retrain_status"))

    def stop(self) -> str:
        self._stop.set()
        self._thread.join()
        return "; ".join(f"{name} answered {len(times)} times, slowest {max(times, default=float('nan')):.2f} s"
                         for name, times in self.latencies.items()) + f"; {len(self.errors)} errors"


def one_run(args, run: int) -> bool:
    from gradio_client import Client

    app = App(home=Path(tempfile.mkdtemp(prefix="retrain-under-load-home-")))
    try:
        uploaded = upload_test_images(app.url, args.uploads)
        before = locust(app.url, args.users, args.before, args.out / f"run{run}-without")
        before.wait()
        line, without = summarize(read_stats(args.out / f"run{run}-without"), f"run {run}, without a retrain")
        print(line, flush=True)

        during = locust(app.url, args.users, "20m", args.out / f"run{run}-during")
        time.sleep(3)
        poller, started, outcome = StatusPoller(app.url), time.time(), {}
        try:
            text = Client(app.url, verbose=False).predict(0.98, 4, "", api_name="/retrain")[0]
            outcome = {"ok": True, "text": text.splitlines()[0], "version": text.split("New version **")[1].split("**")[0]}
        except Exception as exc:
            outcome = {"ok": False, "text": f"{exc.__class__.__name__}: {str(exc)[:300]}"}
        seconds = time.time() - started
        status_line = poller.stop()
        during.send_signal(signal.SIGTERM)  # Locust stops its users and writes its CSV
        try:
            during.wait(60)
        except subprocess.TimeoutExpired:
            during.kill()
            raise
        line, with_retrain = summarize(read_stats(args.out / f"run{run}-during"), f"run {run}, during the retrain")
        print(line, flush=True)
        ratio = with_retrain["predict_rps"] / max(without["predict_rps"], 1e-9)
        print(f"run {run}: retrain on {uploaded} uploads, caller's answer after {seconds:.0f} s: "
              f"{'version ' + outcome['version'] + ', ' if outcome['ok'] else ''}{outcome['text']}; {status_line}; "
              f"predictions during it {100 * ratio:.0f}% of without", flush=True)
        return outcome["ok"]
    finally:
        app.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--users", type=int, default=32)
    parser.add_argument("--uploads", type=int, default=1000)
    parser.add_argument("--before", default="45s", help="how long the load runs without a retrain")
    parser.add_argument("--out", type=Path, default=ROOT / "loadtest" / "results" /
                        f"retrain-under-load-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    answered = sum(one_run(args, run) for run in range(1, args.runs + 1))
    print(f"the retrain's caller got its result in {answered} of {args.runs} runs")
    print(f"CPU: {cpu.describe()}; Locust on the same cores; reports in {args.out}")


if __name__ == "__main__":
    main()
