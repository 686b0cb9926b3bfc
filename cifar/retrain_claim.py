"""One retrain at a time across every replica of a deployment: a claim on the Hub.

The claim is `retrain.json` at the head of the model repository's main, written with the head
its writer read as parent commit: of two replicas claiming at once the second gets HTTP 412,
reads again and finds the first one's claim. A claim names its replica and job, says since when,
and expires (CIFAR_CLAIM_TTL_S) unless its replica renews it, so a replica that dies mid-retrain
blocks the others for at most that long. Released when the retrain ends, whatever the outcome.
"""
import contextlib
import json
import time
from datetime import UTC, datetime

from . import config, hub

CLAIM_FILE = "retrain.json"


class Claimed(RuntimeError):
    """Another replica holds the retrain claim; `claim` is its record."""

    def __init__(self, claim: dict):
        super().__init__(describe(claim))
        self.claim = claim


def describe(claim: dict) -> str:
    since = datetime.fromtimestamp(claim["since"], UTC).strftime("%H:%M:%S")
    return f"retraining on replica {claim['replica']} since {since} UTC"


def active(claim: dict | None, now: float | None = None) -> bool:
    return bool(claim) and claim.get("state") == "running" and claim.get("expires", 0) > (now or time.time())


def read(repo_id: str, revision: str | None) -> dict | None:
    """The claim record at `revision` (active or not), or None."""
    raw = hub.read_file(repo_id, CLAIM_FILE, revision=revision) if revision else None
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return None  # an unreadable claim claims nothing


def holder(repo_id: str) -> dict | None:
    """The claim in force on the Hub, or None."""
    claim = read(repo_id, hub.head(repo_id))
    return claim if active(claim) else None


def _write(repo_id: str, change) -> dict:
    """Read the claim at the head, let `change(claim)` return the new record (or raise), commit
    it on that head; on a conflict read again."""
    while True:
        parent = hub.head(repo_id)
        record = change(read(repo_id, parent))
        try:
            hub.commit(repo_id, {CLAIM_FILE: json.dumps(record, indent=1).encode()},
                       f"Retrain {record['state']} on {record['replica']}", parent=parent)
            return record
        except hub.HubConflict:
            continue


def acquire(repo_id: str, replica: str, job: str, uploads_revision: str | None = None) -> dict:
    """Claim the retrain for `replica`; returns the claim.

    Raises:
        Claimed: another replica's claim is in force.
        HubError: the Hub could not be reached.
    """
    def change(claim):
        if active(claim) and claim["replica"] != replica:
            raise Claimed(claim)
        now = time.time()
        return {"state": "running", "replica": replica, "job": job, "since": now,
                "expires": now + config.claim_ttl_seconds(), "uploads_revision": uploads_revision}
    return _write(repo_id, change)


def renew(repo_id: str, claim: dict) -> dict:
    """Push the claim's expiry out again (the replica is alive and still training)."""
    def change(current):
        if not current or current.get("job") != claim["job"]:
            raise Claimed(current or claim)  # it expired and another replica took it
        return {**current, "expires": time.time() + config.claim_ttl_seconds()}
    return _write(repo_id, change)


def release(repo_id: str, claim: dict, outcome: str) -> None:
    """End the claim (if it is still this one's)."""
    def change(current):
        if not current or current.get("job") != claim["job"]:
            raise Claimed(current or claim)
        return {**current, "state": "ended", "outcome": outcome[:200], "ended": time.time()}
    with contextlib.suppress(Claimed):  # taken over after it expired: nothing of ours to release
        _write(repo_id, change)
