#!/usr/bin/env bash
# The whole test set-up in one command (the README's): install the app's and the tests' Python
# packages and a headless browser, lint (ruff, the layers contract, the Dockerfile), run the suite.
#   bash tests/run.sh [pytest arguments]     e.g. bash tests/run.sh -k browser
# The browser: Debian's chromium where this runs as root with apt-get (no download of its own is
# needed, and none can be made offline); elsewhere Playwright's own Chromium (needs internet).
# HAProxy: Debian's, for the cluster tests (elsewhere: install it with the system's packages).
set -euo pipefail
cd "$(dirname "$0")/.."
export GRADIO_ANALYTICS_ENABLED=False PIP_DISABLE_PIP_VERSION_CHECK=1

python3 -m pip install -q -r requirements.txt -r tests/requirements.txt
# OpenVINO's and NNCF's usage events off (their documented opt-out, as the Dockerfile does): each
# conversion otherwise forks the test's process a dozen times to send them, offline or not.
opt_in_out --opt_out >/dev/null

# Debian's packages the tests use: chromium (the browser), haproxy (the replicas' balancer), and
# the libraries OpenCV needs.
missing=""
command -v chromium >/dev/null || missing="chromium"
command -v haproxy >/dev/null || missing="$missing haproxy"
# OpenCV (under the corruptions library of bench-corruptions) loads libGL and GLib.
ldconfig -p | grep "libGL.so.1 " >/dev/null || missing="$missing libgl1"
ldconfig -p | grep "libgthread-2.0.so.0 " >/dev/null || missing="$missing libglib2.0-0"
if [ -n "$missing" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
  elif [[ "$missing" == *chromium* ]]; then
    python3 -m playwright install chromium
  fi
fi

# The tests read CIFAR-10 from CIFAR_DATA or ../shared/cifar10; a fresh clone elsewhere downloads it
# once (needs internet; offline, this stops with what to do instead).
python3 -m cifar get-data

ruff check .
lint-imports
hadolint --ignore DL3008 Dockerfile

# Two test files at a time (pytest-xdist; TEST_WORKERS changes it): one at a time left a core idle
# 40% of the run. A file's tests stay together in one worker, so its module fixtures (an app, a
# Hub server) are made once. --no-loadscope-reorder: files go out in collection order (the longest
# first, tests/conftest.py), not xdist's default of the files with the most tests first.
python3 -m pytest -n "${TEST_WORKERS:-2}" --dist loadfile --no-loadscope-reorder "$@"
