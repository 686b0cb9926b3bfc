"""One request at a time: the app's time from start to first answer, the p50 round trip of a
prediction through gradio_client (upload + call + result), and the app's memory (RSS) after them.

    python loadtest/latency.py --requests 50
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import App

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=50)
    args = parser.parse_args()
    from gradio_client import Client, handle_file

    started = time.time()
    app = App({})
    try:
        client = Client(app.url, verbose=False)
        image = handle_file(str(ROOT / "assets" / "examples" / "cat.png"))
        client.predict(image, api_name="/predict")
        first_answer = time.time() - started
        timings = []
        for _ in range(args.requests):
            t = time.perf_counter()
            client.predict(image, api_name="/predict")
            timings.append(time.perf_counter() - t)
        memory = app.rss_mb()
    finally:
        app.stop()
    timings.sort()
    print(f"start to first answer {first_answer:.1f} s (server ready after {app.ready_seconds:.1f} s); "
          f"gradio_client predict round trip over {args.requests} requests: p50 {1000 * statistics.median(timings):.0f} ms, "
          f"p95 {1000 * timings[int(0.95 * (len(timings) - 1))]:.0f} ms; app memory (RSS) {memory:.0f} MB")


if __name__ == "__main__":
    main()
