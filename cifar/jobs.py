"""Long jobs (a retrain) as records in the app's own store, not as one long HTTP request.

A job is a JSON file under CIFAR_HOME/jobs: its state (queued, running, done, failed,
interrupted), its phase and progress while it runs, its result or error when it ends. The
request that started it may die (an evicted event stream, a closed tab, a client timeout): the
job goes on and anyone can read its state, by id or as the latest. A job left "running" by a
process that died is marked interrupted when the next one starts.
"""
import json
import logging
import threading
import time
import uuid
from pathlib import Path

from .registry import write_json_atomic

log = logging.getLogger("cifar")

ACTIVE = ("queued", "running")
ENDED = ("done", "failed", "interrupted")


class UnknownJob(KeyError):
    """No job with that id in the store."""


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class JobStore:
    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._cache: dict[str, dict] = {}  # the jobs this process wrote: it is their only writer

    def _path(self, job_id: str) -> Path:
        if not job_id or not all(c.isalnum() or c in "-" for c in job_id):  # never a path outside the folder
            raise UnknownJob(job_id)
        return self.folder / f"{job_id}.json"

    def create(self, kind: str, params: dict) -> dict:
        job_id = f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{kind}-{uuid.uuid4().hex[:6]}"
        job = {"id": job_id, "kind": kind, "state": "queued", "created": _now(), "started": None, "ended": None,
               "params": params, "phase": "queued", "progress": 0.0, "result": None, "error": None}
        with self._lock:
            self._write(job)
        return dict(job)

    def update(self, job_id: str, **fields) -> dict:
        with self._lock:
            job = {**self._read(job_id), **fields}
            if fields.get("state") == "running" and not job["started"]:
                job["started"] = _now()
            if fields.get("state") in ENDED:
                job["ended"] = _now()
            self._write(job)
        return dict(job)

    def get(self, job_id: str) -> dict:
        with self._lock:
            return dict(self._read(job_id))

    def latest(self, kind: str) -> dict | None:
        """The newest job of `kind` (ids sort by their start time), or None."""
        newest = max(self.folder.glob(f"*-{kind}-*.json"), default=None)
        return self.get(newest.stem) if newest else None

    def mark_interrupted(self) -> list[str]:
        """Jobs a previous process left queued or running: it died with them. Returns their ids."""
        marked = []
        for path in self.folder.glob("*.json"):
            job = self.get(path.stem)
            if job["state"] in ACTIVE:
                self.update(job["id"], state="interrupted",
                            error=f"The app stopped while this job was {job['state']} ({job['phase']}); "
                                  "nothing it would have saved was kept. Start it again.")
                marked.append(job["id"])
        return marked

    def _read(self, job_id: str) -> dict:
        if job_id in self._cache:
            return self._cache[job_id]
        try:
            return json.loads(self._path(job_id).read_text())
        except (OSError, ValueError):
            raise UnknownJob(job_id) from None

    def _write(self, job: dict) -> None:
        """Under the store's lock: the file, atomically, and this process's copy."""
        write_json_atomic(self._path(job["id"]), job)
        self._cache[job["id"]] = job


class Busy(RuntimeError):
    """A job of this kind is already running; `job` is it."""

    def __init__(self, job: dict):
        super().__init__(f"job {job['id']} is running")
        self.job = job


class JobRunner:
    """One job of a kind at a time (a retrain), run in a thread of its own or the caller's, its
    state kept in a `JobStore` as it goes. `work(params, report)` does the job and returns its
    result (JSON-able); `report(fraction, phase)` records progress. Errors of the `expected`
    types are the user's to fix: their message is the job's error; any other is logged in full
    and named in one line."""

    def __init__(self, store: JobStore, kind: str, work, expected: tuple = ()):
        self.store, self.kind, self.work, self.expected = store, kind, work, expected
        self._lock = threading.Lock()
        self.running: dict | None = None  # the job in progress, as it was created

    def start(self, params: dict) -> dict:
        """Start a job in the background; returns it (id, state "queued") at once.

        Raises:
            Busy: one is running already.
        """
        job = self._claim(params)
        threading.Thread(target=self._run, args=(job["id"], params, None, False), daemon=True,
                         name=f"job-{job['id']}").start()
        return job

    def run(self, params: dict, report=None):
        """Run a job in this thread and return its result (raising what it raised); recorded like
        any other. `report(fraction, phase)` hears its progress too."""
        job = self._claim(params)
        return self._run(job["id"], params, report, True)

    def wait(self, job_id: str, report=None, poll_s: float = 0.5) -> dict:
        """The job once it has ended; `report(fraction, phase)` hears each change of progress."""
        seen = None
        while True:
            job = self.store.get(job_id)
            if job["state"] in ENDED:
                return job
            if report and (job["progress"], job["phase"]) != seen:
                seen = (job["progress"], job["phase"])
                report(*seen)
            time.sleep(poll_s)

    def _claim(self, params: dict) -> dict:
        if not self._lock.acquire(blocking=False):
            raise Busy(self.running or {"id": "?", "created": _now()})
        try:
            self.running = self.store.create(self.kind, params)
        except BaseException:
            self._lock.release()
            raise
        return self.running

    def _run(self, job_id: str, params: dict, report, reraise: bool):
        def progress(fraction: float, phase: str) -> None:
            self.store.update(job_id, progress=round(float(fraction), 3), phase=phase)
            if report:
                report(fraction, phase)

        try:
            self.store.update(job_id, state="running", phase="starting")
            result = self.work(params, progress)
        except Exception as exc:
            if isinstance(exc, self.expected):
                error = str(exc)
            else:
                log.exception("%s job %s failed", self.kind, job_id)
                error = f"The {self.kind} failed unexpectedly ({exc.__class__.__name__}); the app's log has the details."
            self.store.update(job_id, state="failed", error=error)
            if reraise:
                raise
            return None
        else:
            self.store.update(job_id, state="done", phase="done", progress=1.0, result=result)
            return result
        finally:
            self.running = None
            self._lock.release()
