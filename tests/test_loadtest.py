"""A 3-second Locust smoke run (4 users, a hundred predictions or more) through Gradio's HTTP API: any
failed request fails the build."""
import csv
import subprocess
import sys
from pathlib import Path

from gradio_client import Client

ROOT = Path(__file__).resolve().parent.parent


def run_load(host: str, out: Path, duration: str, timeout: float) -> tuple[int, str]:
    """Run loadtest/run.py with --fail-on-error against `host`; assert it passed with 0 failures
    and return how many predict round trips it made (Locust's CSV) and its report."""
    result = subprocess.run([sys.executable, str(ROOT / "loadtest" / "run.py"), "--host", host,
                             "--users", "4", "--spawn-rate", "4", "--duration", duration, "--fail-on-error",
                             "--out", str(out)], capture_output=True, text=True, timeout=timeout)
    summary = [line for line in result.stdout.splitlines() if line.startswith("run:")]
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert summary and "failures 0" in summary[0]
    with open(out / "run_stats.csv") as handle:
        rows = {row["Name"]: row for row in csv.DictReader(handle)}
    return int(rows["predict round trip"]["Request Count"]), result.stdout


def test_smoke_load_run_has_no_failures(app_server, tmp_path):
    out = tmp_path / "load"
    served, report = run_load(app_server.url, out, "3s", timeout=180)
    assert served > 0  # it really served predictions, each one checked by the locustfile
    runtime = Client(app_server.url, verbose=False).predict(api_name="/monitoring")["runtime"]
    assert f"served by {runtime}" in report, report  # the report names what served, as the app does
    for name in ("run_stats.csv", "run.html", "run_over_time.png"):
        assert (out / name).stat().st_size > 0


def answers_the_load(script: str, tmp_path, ready_timeout: float) -> None:
    sys.path.insert(0, str(ROOT / "loadtest"))
    from run import App

    app = App(home=tmp_path / "home", script=ROOT / "loadtest" / script, timeout=ready_timeout)
    try:
        assert run_load(app.url, tmp_path / "load", "3s", timeout=120)[0] > 0
    finally:
        app.stop()


def test_ceiling_app_answers_the_same_load_without_failures(tmp_path):
    """The ceiling app must pass every check the locustfile makes, or its rate would not be a
    ceiling of the real app's work (a failed request is cheaper than a served one)."""
    answers_the_load("ceiling_app.py", tmp_path, ready_timeout=60)


def test_plain_space_baseline_answers_the_same_load_without_failures(tmp_path):
    """`run.py --compare` divides by the baseline's rate: it must pass the locustfile's checks."""
    answers_the_load("plain_space.py", tmp_path, ready_timeout=120)
