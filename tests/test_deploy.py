"""Deployment files: every Dockerfile COPY source exists, the container command starts the app,
the README's Space front matter matches requirements, and the pins are the versions installed."""
import re
from importlib.metadata import version
from pathlib import Path

from conftest import AppProcess

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = (ROOT / "Dockerfile").read_text()


def test_every_copy_source_exists():
    sources = [line.split()[-2] for line in DOCKERFILE.splitlines() if line.startswith("COPY")]
    assert sources and all((ROOT / s).exists() for s in sources)
    assert {"app.py", "cifar", "assets", "models", "requirements.txt"} <= set(sources)


def test_container_basics():
    assert DOCKERFILE.startswith("#") and "FROM python:3.11-slim" in DOCKERFILE
    assert "--uid 1000" in DOCKERFILE and "USER 1000" in DOCKERFILE and "EXPOSE 7860" in DOCKERFILE
    assert "HEALTHCHECK" in DOCKERFILE and "CIFAR_HOME=/data" in DOCKERFILE


def test_container_command_starts_the_app(tmp_path):
    command = re.search(r'^CMD \[(.*)\]$', DOCKERFILE, re.M).group(1)
    assert [part.strip().strip('"') for part in command.split(",")] == ["python", "app.py"]
    env = dict(re.findall(r"(GRADIO_SERVER_NAME|GRADIO_ANALYTICS_ENABLED)=(\S+)", DOCKERFILE))
    app = AppProcess(tmp_path / "data", env={**env, "GRADIO_SERVER_NAME": "127.0.0.1"})  # same command, local
    try:
        import httpx

        health = re.search(r"urlopen\('http://127.0.0.1:7860(/\S+)'", DOCKERFILE).group(1)
        answer = httpx.get(f"{app.url}{health}", timeout=5)  # the health check's URL, on the same app
        assert answer.status_code == 200 and answer.json()["status"] == "ok"
    finally:
        app.stop()
    assert (tmp_path / "data" / "models" / "state.json").exists()  # state went to CIFAR_HOME


def test_requirements_pin_installed_versions():
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, pinned = re.match(r"([A-Za-z0-9_.\-]+)(?:\[.*\])?==(.+)", line).groups()
            assert version(name) == pinned, f"{name}: installed {version(name)}, pinned {pinned}"


def test_readme_front_matter_matches():
    readme = (ROOT / "README.md").read_text()
    front = readme.split("---")[1]
    for key in ("title:", "emoji:", "colorFrom:", "colorTo:", "sdk: gradio", "app_file: app.py", "license:",
                "short_description:"):
        assert key in front
    sdk = re.search(r"sdk_version: (\S+)", front).group(1)
    assert f"gradio[mcp]=={sdk}" in (ROOT / "requirements.txt").read_text()


def test_share_link_failure_is_plain_and_serving_goes_on(tmp_path):
    import time

    import httpx

    app = AppProcess(tmp_path / "home", env={"GRADIO_SHARE": "true"})
    try:
        deadline = time.time() + 90
        while "share link" not in app.log.read_text().lower() and "Public link" not in app.log.read_text():
            assert time.time() < deadline, app.log.read_text()[-2000:]
            time.sleep(0.5)
        assert httpx.get(f"{app.url}/gradio_api/info", timeout=5).status_code == 200
        log = app.log.read_text()
        assert "Public link: https://" in log or "No public share link could be created" in log
    finally:
        app.stop()
