"""A 15-second Locust smoke run through Gradio's HTTP API: any failed request fails the build."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_smoke_load_run_has_no_failures(app_server, tmp_path):
    out = tmp_path / "load"
    result = subprocess.run([sys.executable, str(ROOT / "loadtest" / "run.py"), "--host", app_server.url,
                             "--users", "4", "--spawn-rate", "4", "--duration", "15s", "--fail-on-error",
                             "--out", str(out)], capture_output=True, text=True, timeout=180)
    summary = [line for line in result.stdout.splitlines() if line.startswith("run:")]
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert summary and "failures 0" in summary[0]
    predicted = float(summary[0].split("predict round trips ")[1].split("/s")[0])
    assert predicted > 0.5  # it really served predictions
    for name in ("run_stats.csv", "run.html", "run_over_time.png"):
        assert (out / name).stat().st_size > 0


def test_ceiling_app_answers_the_same_load_without_failures(tmp_path):
    """The ceiling app must pass every check the locustfile makes, or its rate would not be a
    ceiling of the real app's work (a failed request is cheaper than a served one)."""
    sys.path.insert(0, str(ROOT / "loadtest"))
    from run import App

    app = App(home=tmp_path / "home", script=ROOT / "loadtest" / "ceiling_app.py", timeout=60)
    try:
        result = subprocess.run([sys.executable, str(ROOT / "loadtest" / "run.py"), "--host", app.url,
                                 "--users", "4", "--spawn-rate", "4", "--duration", "5s", "--fail-on-error",
                                 "--out", str(tmp_path / "load")], capture_output=True, text=True, timeout=120)
    finally:
        app.stop()
    summary = [line for line in result.stdout.splitlines() if line.startswith("run:")]
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert summary and "failures 0" in summary[0]
    assert float(summary[0].split("predict round trips ")[1].split("/s")[0]) > 1
