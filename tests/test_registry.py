"""Versions are never overwritten; promotion and rollback are atomic, even under SIGKILL."""
import json
import signal
import subprocess
import sys
import time

import pytest

from cifar.registry import Registry, RegistryError, new_version_id

ROOT = __import__("pathlib").Path(__file__).resolve().parent.parent


def fake_version(reg: Registry, version_id: str):
    def write(folder):
        (folder / "model.keras").write_bytes(b"weights of " + version_id.encode())
        (folder / "metadata.json").write_text(json.dumps({"kind": "test"}))
    return reg.save(version_id, write)


def test_save_list_promote_rollback(tmp_path):
    reg = Registry(tmp_path)
    a, b, c = (fake_version(reg, f"2026010{i}T000000Z-test") for i in (1, 2, 3))
    assert [v.id for v in reg.list()] == [a.id, b.id, c.id]
    assert reg.current().id == c.id  # newest until something is promoted
    reg.promote(a.id)
    reg.promote(b.id)
    assert reg.current().id == b.id
    assert reg.rollback().id == a.id          # back to the previous current
    assert reg.rollback(c.id).id == c.id      # or to any version by id
    assert [p[1] for p in reg.promotions()] == [a.id, b.id, a.id, c.id]


def test_versions_are_never_overwritten(tmp_path):
    reg = Registry(tmp_path)
    version = fake_version(reg, "20260101T000000Z-test")
    with pytest.raises(RegistryError, match="never overwritten"):
        fake_version(reg, version.id)
    assert version.model_path.read_bytes() == b"weights of 20260101T000000Z-test"


def test_unknown_and_unsafe_ids(tmp_path):
    reg = Registry(tmp_path)
    fake_version(reg, "20260101T000000Z-test")
    for bad in ("nope", "../versions", ".staging-x"):
        with pytest.raises(RegistryError):
            reg.get(bad)
    with pytest.raises(RegistryError, match="nothing to roll back"):
        reg.rollback()


def test_failed_save_leaves_nothing(tmp_path):
    reg = Registry(tmp_path)
    def broken(folder):
        (folder / "model.keras").write_bytes(b"half")
        raise OSError("disk full")
    with pytest.raises(OSError):
        reg.save("20260101T000000Z-test", broken)
    assert reg.list() == [] and not list(reg.versions_dir.iterdir())


def test_version_ids_start_with_utc_time():
    assert new_version_id("retrain").endswith("Z-retrain")
    assert new_version_id("x")[:8].isdigit() and new_version_id("x")[8] == "T"


KILLED_WRITER = """
import sys, time
sys.path.insert(0, {root!r})
from cifar.registry import Registry
reg = Registry({path!r})
def slow(folder):
    (folder / "model.keras").write_bytes(b"x" * 1000)
    print("writing", flush=True)
    time.sleep(30)
reg.save("20260102T000000Z-killed", slow)
"""

KILLED_PROMOTER = """
import sys
sys.path.insert(0, {root!r})
from cifar.registry import Registry
reg = Registry({path!r})
print("promoting", flush=True)
while True:
    for v in ("20260101T000000Z-test", "20260103T000000Z-test"):
        reg.promote(v)
"""


def run_and_kill(script: str, after: float) -> None:
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    proc.stdout.readline()  # wait until it is inside the critical part
    time.sleep(after)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def test_sigkill_while_saving_keeps_registry_intact(tmp_path):
    reg = Registry(tmp_path)
    first = fake_version(reg, "20260101T000000Z-test")
    reg.promote(first.id)
    run_and_kill(KILLED_WRITER.format(root=str(ROOT), path=str(tmp_path)), after=0.3)
    reopened = Registry(tmp_path)
    assert [v.id for v in reopened.list()] == [first.id]
    assert reopened.current().id == first.id
    reopened.clean_staging()
    assert not list(reopened.versions_dir.glob(".staging-*"))


@pytest.mark.parametrize("after", [0.05, 0.2, 0.5])
def test_sigkill_while_promoting_leaves_a_valid_state(tmp_path, after):
    reg = Registry(tmp_path)
    ids = {fake_version(reg, v).id for v in ("20260101T000000Z-test", "20260103T000000Z-test")}
    reg.promote("20260101T000000Z-test")
    run_and_kill(KILLED_PROMOTER.format(root=str(ROOT), path=str(tmp_path)), after=after)
    state = json.loads((tmp_path / "state.json").read_text())  # parses: never half-written
    assert state["current"] in ids and Registry(tmp_path).current().id in ids
