"""The app's state kept on the Hub, so a Space that restarts on an empty disk loses nothing.

What lives where (with HF_REPO_ID set; without it nothing here runs):
- every model version: a tagged commit of the model repository (cifar.hub.push), pushed once;
- which version is current: `current.json` at the head of the model repository's main (with that
  version's files and card, so `hf://repo` loads what serves and the card says it is current), written
  with the head the writer last read as parent commit, so of two writers the second gets a
  conflict (HTTP 412) instead of silently overwriting: it re-reads, and if another app changed the
  current version meanwhile it takes that one (and says so) instead of its own;
- the uploads and the review labels: the private dataset repository HF_DATASET_ID (created on
  first use), as the PNGs the upload store writes (`images/<sha1>.png`, named by content) and the
  manifest and label lines as append-only files named by writer and line range
  (`manifest/<writer>-<first>-<end>.jsonl`, `labels/...`): no two writers touch the same file, and
  a retried commit writes the same paths with the same bytes, so nothing is ever duplicated.

Why plain `create_commit` and not `CommitScheduler`: the current version needs `parent_commit`
(which the scheduler cannot set), the app must know which lines are on the Hub (the scheduler
re-uploads a folder on a timer and reports nothing per file), and it must back off on 429/503.

Replicas (several apps configured with the same repositories) follow each other through the
same records: every CIFAR_FOLLOW_S the thread reads the two heads of main (one cheap call each);
when the model repository's moved and `current.json` names another version, it pulls that one,
loads it beside the one serving and swaps it in; when the dataset repository's moved, it imports
the manifest and label files other writers added. A retrain is claimed for the whole deployment
first (cifar.retrain_claim), on the uploads as of the dataset's head.

One thread commits: an upload at once, labels after LABEL_QUIET_S without a new one, never two
dataset commits within CIFAR_SYNC_SPACING_S (60 s: at most 60 an hour, the Hub allows ~128).
What it has committed is kept in CIFAR_HOME/sync.json (the watermarks); the range of a commit is
written there before the commit, so a crash between the commit and the watermark repeats the same
commit rather than a different one. On errors it retries with backoff (5 s doubling to 5 min, or
the server's Retry-After); the app keeps serving and storing meanwhile.
"""
import json
import logging
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

from . import config, hub, retrain_claim
from .registry import Registry, RegistryError, write_json_atomic
from .uploads import UploadStore, read_lines

log = logging.getLogger("cifar")

LABEL_QUIET_S = 5.0      # labels come in bursts (the Review tab): commit once they pause
MAX_BACKOFF_S = 300.0


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _jsonl(lines: list[dict]) -> bytes:
    return "".join(json.dumps(line) + "\n" for line in lines).encode()


class StateSync:
    def __init__(self, registry: Registry, uploads: UploadStore, home: Path, on_current=None):
        self.registry, self.uploads = registry, uploads
        self.model_repo, self.dataset_repo = config.hub_repo_id(), config.hub_dataset_id()
        self.on_current = on_current or (lambda version_id: None)  # the app serves what the Hub says
        self.state_file = Path(home) / "sync.json"
        try:
            self.state = json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            self.state = {"writer": uuid.uuid4().hex[:8], "manifest": 0, "reviews": 0, "inflight": None,
                          "current": None, "pushed": []}
        self.state.setdefault("imported", [])  # dataset files of other writers already in the store
        self.replica = config.replica_name()
        self.claim: dict | None = None           # this replica's retrain claim while it retrains
        self.claim_elsewhere: dict | None = None  # another replica's, as last read
        self.followed: str | None = None          # when the Hub was last read for others' changes
        self._heads: dict[str, str | None] = {}   # the heads of main last followed
        self._next_follow = 0.0
        self._follow_lock = threading.Lock()
        self.last_success: str | None = None
        self.last_error: str | None = None
        self.conflict: str | None = None
        self._promotions_at_start: int | None = None  # the registry's promotions at the first round
        self.commits = 0
        self._wake = threading.Event()
        self._last_label = 0.0
        self._last_dataset_commit = 0.0
        self._stop = False
        self._thread: threading.Thread | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.model_repo)

    def _save(self) -> None:
        write_json_atomic(self.state_file, self.state)

    # --- restore at start -------------------------------------------------------------------
    def restore(self) -> str | None:
        """On an empty disk, bring back from the Hub the current version (and seed the registry),
        every upload and every label; returns a line for the log (with the time it took), or
        None where there is nothing to restore or no Hub. Hub errors leave the disk as it is."""
        if not self.enabled:
            return None
        started, said = time.perf_counter(), []
        try:
            if not self.registry.list():
                said.append(self._restore_current())
            if self.dataset_repo and not self.uploads.manifest_entries():
                said.append(self._restore_uploads())
        except hub.HubError as exc:
            log.warning("restore from the Hub failed, starting from what this disk has: %s", exc)
            self.last_error = str(exc)
        said = [s for s in said if s]
        if not said:
            return None
        return f"restored from the Hub in {time.perf_counter() - started:.1f} s: " + "; ".join(said)

    def _current_on_hub(self, revision: str | None = None) -> str | None:
        """The version `current.json` names at `revision` (the head of main), or None."""
        raw = hub.read_file(self.model_repo, hub.CURRENT_FILE, revision=revision)
        return json.loads(raw)["version"] if raw else None

    def _restore_current(self) -> str | None:
        current = self._current_on_hub()
        if current is None:
            return None
        self.registry.seed_from(config.shipped_models_dir())
        try:
            self.registry.get(current)
        except RegistryError:
            hub.pull(self.registry, current, self.model_repo)
        self.registry.promote(current, reason="restored from the Hub")
        self.state.update(current=current, pushed=[v.id for v in self.registry.list()])
        self._save()
        return f"current version {current}"

    def _restore_uploads(self) -> str | None:
        count, labels, skipped = self._import_others()
        if not count and not labels:
            return None
        self.state.update(manifest=len(self.uploads.manifest_entries()), reviews=len(self.uploads.review_entries()),
                          inflight=None)
        self._save()
        return f"{count} uploads and {labels} label lines" + (f" ({len(skipped)} skipped: {skipped[0]}...)" if skipped else "")

    def _import_others(self, revision: str | None = None) -> tuple[int, int, list[str]]:
        """Bring into the store the manifest and label files other writers (other replicas, or
        this app before a restart on an empty disk) committed to the dataset repository as of
        `revision` (the head). Returns (uploads, label lines, skipped)."""
        with self._follow_lock:
            revision = revision or hub.head(self.dataset_repo, "dataset")
            if revision is None:
                return 0, 0, []
            own, done = f"{self.state['writer']}-", set(self.state["imported"])
            new = [path for folder in ("manifest", "labels")
                   for path in hub.list_files(self.dataset_repo, folder, "dataset", revision)
                   if path.endswith(".jsonl") and not path.split("/")[-1].startswith(own) and path not in done]
            if not new:
                return 0, 0, []
            with tempfile.TemporaryDirectory() as work:
                folder = hub.download(self.dataset_repo, Path(work), "dataset", patterns=new, revision=revision)
                entries = [line for path in new if path.startswith("manifest/") for line in read_lines(folder / path)]
                reviews = [line for path in new if path.startswith("labels/") for line in read_lines(folder / path)]
                have = {line.get("sha1") for line in self.uploads.manifest_entries()}
                wanted = [f"images/{e['sha1']}.png" for e in entries if e.get("sha1") not in have]
                if wanted:
                    hub.download(self.dataset_repo, Path(work), "dataset", patterns=wanted, revision=revision)
                images = folder / "images"
                count, labels, skipped = self.uploads.import_copy(
                    entries, reviews, lambda name: images / name if (images / name).is_file() else None,
                    origin="hub")
            for line in skipped:
                log.warning("from the Hub: %s", line)
            self.state["imported"].extend(new)
            self._save()
            return count, labels, skipped

    # --- the sync thread ----------------------------------------------------------------------
    def start(self) -> None:
        if self.enabled and self._thread is None:
            self._thread = threading.Thread(target=self._run, daemon=True, name="hub-sync")
            self._thread.start()

    def stop(self, wait_s: float = 60) -> None:
        """Stop syncing; waits for a round in progress (a push under way) to end, so nothing of it
        reaches the Hub afterwards."""
        self._stop = True
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(wait_s)

    def wake(self, labels: bool = False) -> None:
        """Something changed (an upload, a label, a new or current version): sync soon."""
        if labels:
            self._last_label = time.monotonic()
        self._wake.set()

    def _run(self) -> None:
        failures = 0
        while not self._stop:
            self._wake.clear()  # before looking: a change made while it syncs wakes the next round
            try:
                wait = self.sync_once()
                failures = 0
            except Exception as exc:  # the thread must live on: a Hub error, or a version that would not load
                failures += 1
                self.last_error = f"{_now()}: {exc}"
                if isinstance(exc, hub.HubError):
                    log.warning("Hub sync failed (%d in a row), retrying: %s", failures, exc)
                else:
                    log.exception("Hub sync failed (%d in a row), retrying", failures)
                wait = min(MAX_BACKOFF_S, max(getattr(exc, "retry_after", None) or 0, 5 * 2 ** (failures - 1)))
            self._wake.wait(wait)

    def sync_once(self) -> float:
        """Push what is pending, as far as the spacing allows; returns seconds until it is worth
        looking again (something left that waits for the spacing or the label pause)."""
        if self._promotions_at_start is None:
            self._promotions_at_start = len(self.registry.promotions())
        self._push_versions()
        self._publish_current()
        wait = self._commit_uploads()
        if time.monotonic() >= self._next_follow:
            self._follow()
            self._next_follow = time.monotonic() + config.follow_seconds()
        if self.claim and self.claim["expires"] - time.time() < config.claim_ttl_seconds() / 2:
            self.claim = retrain_claim.renew(self.model_repo, self.claim)
        return min(wait, max(0.0, self._next_follow - time.monotonic()))

    def _push_versions(self) -> None:
        """Every local version the Hub lacks (a new retrain; the shipped one only once current)."""
        shipped = {version.id for version in Registry(config.shipped_models_dir()).list()}
        current = self.registry.current().id
        for version in self.registry.list():
            if version.id in self.state["pushed"] or (version.id in shipped and version.id != current):
                continue
            hub.push(version, self.model_repo)
            self.state["pushed"].append(version.id)
            self._save()
            self._succeeded()

    def _publish_current(self) -> None:
        """Record the current version on the Hub; if another app changed it since this one last
        looked, take theirs (exactly one of two simultaneous promotions wins)."""
        local = self.registry.current().id
        while local != self.state["current"]:
            parent = hub.head(self.model_repo)
            on_hub = self._current_on_hub(parent) if parent else None
            if on_hub is not None and on_hub != self.state["current"] and on_hub != local and (
                    self.state["current"] is not None or not self._promoted_here()):
                # Changed elsewhere since this app last agreed with the Hub: a conflict where this app
                # changed it too; one that never agreed (fresh, serving its seed) just follows. Not
                # where a fresh app's own promotion came first (its first rounds failed): that one is
                # the newest decision, published below.
                self._adopt(on_hub, local, conflict=self.state["current"] is not None)
                return
            record = {"version": local, "time": _now(), "writer": self.state["writer"]}
            try:  # main holds the current version's files and card, so hf://repo loads what serves
                with tempfile.TemporaryDirectory() as staging:
                    hub.stage(self.registry.get(local), self.model_repo, Path(staging), current_since=record["time"])
                    files = {str(path.relative_to(staging)): path for path in Path(staging).rglob("*") if path.is_file()}
                    hub.commit(self.model_repo, {**files, hub.CURRENT_FILE: json.dumps(record, indent=1).encode()},
                               f"Current version: {local}", parent=parent)
            except hub.HubConflict:
                continue  # someone committed since: read again
            self.state["current"] = local
            self._save()
            self._succeeded()
            local = self.registry.current().id

    def _promoted_here(self) -> bool:
        """Whether a version was made current on this disk since syncing began (a person's promotion
        or rollback, a retrain's), rather than the one the app started with."""
        return len(self.registry.promotions()) > (self._promotions_at_start or 0)

    def _adopt(self, on_hub: str, local: str, conflict: bool = True) -> None:
        """Serve `on_hub` (pulled if this disk lacks it), loaded and swapped in before the
        registry says it is current: a version that cannot load never becomes current here."""
        try:
            self.registry.get(on_hub)
        except RegistryError:
            hub.pull(self.registry, on_hub, self.model_repo)
        self.on_current(on_hub)
        reason = (f"another app made it current on the Hub (this one had {local})" if conflict
                  else "made current on another replica (followed from the Hub)")
        self.registry.promote(on_hub, reason=reason)
        self.state["current"] = on_hub
        self._save()
        if conflict:
            self.conflict = (f"{_now()}: conflict: another app made {on_hub} current on the Hub while this one "
                             f"made {local} current; {on_hub} serves here too")
            log.warning(self.conflict)
        else:
            log.info("following the Hub: %s is current now (was %s)", on_hub, local)

    def _follow(self) -> None:
        """What other replicas changed: the current version (and the retrain claim), then the
        uploads and labels. Two ref reads when nothing changed."""
        head = hub.head(self.model_repo)
        if head and head != self._heads.get("model"):
            on_hub, local = self._current_on_hub(head), self.registry.current().id
            # Only a change made elsewhere: a local one not yet published is _publish_current's.
            if on_hub and on_hub != local and self.state["current"] == local:
                self._adopt(on_hub, local, conflict=False)
            claim = retrain_claim.read(self.model_repo, head)
            self.claim_elsewhere = claim if retrain_claim.active(claim) and claim["replica"] != self.replica else None
            self._heads["model"] = head
        if self.dataset_repo:
            head = hub.head(self.dataset_repo, "dataset")
            if head and head != self._heads.get("dataset"):
                count, labels, _ = self._import_others(head)
                if count or labels:
                    log.info("from other replicas: %d uploads and %d label lines", count, labels)
                self._heads["dataset"] = head
        self.followed = _now()

    # --- one retrain at a time across replicas -----------------------------------------------
    def claim_retrain(self, job: str) -> str | None:
        """Claim the deployment's retrain for this replica, after importing every upload and label
        the Hub has (the retrain learns from the uploads as of that revision); returns that
        revision. Without a Hub there is nothing to claim; with the Hub unreachable the retrain
        goes ahead on this replica alone (the current version's record still settles which
        version serves).

        Raises:
            retrain_claim.Claimed: another replica is retraining.
        """
        if not self.enabled:
            return None
        try:
            revision = hub.head(self.dataset_repo, "dataset") if self.dataset_repo else None
            if revision:
                self._import_others(revision)
            self.claim = retrain_claim.acquire(self.model_repo, self.replica, job, revision)
            self.claim_elsewhere = None
            return revision
        except hub.HubError as exc:
            log.warning("retrain not claimed on the Hub (%s); it runs on this replica alone", exc)
            return None

    def release_retrain(self, outcome: str) -> None:
        claim, self.claim = self.claim, None
        if claim:
            try:
                retrain_claim.release(self.model_repo, claim, outcome)
            except hub.HubError as exc:
                log.warning("retrain claim not released (it expires by itself): %s", exc)

    def _commit_uploads(self) -> float:
        if not self.dataset_repo:
            return 3600.0
        entries, reviews = self.uploads.manifest_entries(), self.uploads.review_entries()
        inflight = self.state.get("inflight") or {"manifest": [self.state["manifest"], len(entries)],
                                                  "reviews": [self.state["reviews"], len(reviews)]}
        (m0, m1), (r0, r1) = inflight["manifest"], inflight["reviews"]
        if m0 == m1 and r0 == r1:
            return 3600.0
        wait = self._last_dataset_commit + config.sync_spacing_seconds() - time.monotonic()
        if m0 == m1:  # labels only: wait for the burst to pause
            wait = max(wait, self._last_label + LABEL_QUIET_S - time.monotonic())
        if wait > 0:
            return wait
        self.state["inflight"] = inflight
        self._save()
        writer = self.state["writer"]
        own_entries = [entry for entry in entries[m0:m1] if not entry.get("origin")]  # not what came from the Hub
        own_reviews = [line for line in reviews[r0:r1] if not line.get("origin")]
        files: dict[str, bytes | Path] = {}
        for entry in own_entries:
            files[f"images/{entry['image']}"] = self.uploads.images_dir / entry["image"]
        if own_entries:
            files[f"manifest/{writer}-{m0:07d}-{m1:07d}.jsonl"] = _jsonl(own_entries)
        if own_reviews:
            files[f"labels/{writer}-{r0:07d}-{r1:07d}.jsonl"] = _jsonl(own_reviews)
        if files:
            hub.ensure_repo(self.dataset_repo, "dataset", private=True)
            hub.commit(self.dataset_repo, files, f"{len(own_entries)} uploads, {len(own_reviews)} labels from {writer}",
                       repo_type="dataset")
            self._last_dataset_commit = time.monotonic()
        self.state.update(manifest=m1, reviews=r1, inflight=None)
        self._save()
        self._succeeded()
        return 0.0  # more may have arrived meanwhile: look again

    def _succeeded(self) -> None:
        self.commits += 1
        self.last_success, self.last_error = _now(), None

    # --- what the app shows -----------------------------------------------------------------
    def status(self) -> dict:
        """Plain numbers for Monitoring and /monitoring."""
        if not self.enabled:
            return {"configured": False}
        pending_uploads = pending_labels = 0  # HF_DATASET_ID=off: uploads and labels stay local, nothing waits
        if self.dataset_repo:  # this app's own lines past the watermarks (not those that came from the Hub)
            pending_uploads = sum(not line.get("origin") for line in self.uploads.manifest_entries()[self.state["manifest"]:])
            pending_labels = sum(not line.get("origin") for line in self.uploads.review_entries()[self.state["reviews"]:])
        return {"configured": True, "model_repo": self.model_repo, "dataset_repo": self.dataset_repo,
                "pending_uploads": pending_uploads, "pending_labels": pending_labels,
                "current_on_hub": self.state["current"], "commits": self.commits,
                "last_success": self.last_success, "last_error": self.last_error, "conflict": self.conflict,
                "replica": self.replica, "followed": self.followed,
                "retrain_elsewhere": self.retrain_elsewhere()}

    def retrain_elsewhere(self) -> str | None:
        """"retraining on replica X since ..." while another replica holds the claim, as last read."""
        claim = self.claim_elsewhere
        return retrain_claim.describe(claim) if retrain_claim.active(claim) else None

    def where(self) -> str:
        """Where what was just saved is: "hub" (every line synced), "pending", or "local only"."""
        if not self.enabled or not self.dataset_repo:
            return "local only"
        status = self.status()
        return "hub" if status["pending_uploads"] == 0 and status["pending_labels"] == 0 else "pending"

