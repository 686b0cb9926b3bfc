"""What the app does, as operations over one `Service` that owns its state: the registry, the
upload store and its review queue, the serving predictor (swapped atomically after a promotion),
the micro-batcher, the monitor, the state's sync with the Hub (cifar.state_sync), and retrains
as jobs in the app's own store.

Every method returns plain data (numbers, dicts, rows, file paths); the words, tables and plots a
person sees are made by cifar.ui. Errors a user can cause are raised as `UserError` with a
message fit to show; nothing here prints secrets.
"""
import hmac
import logging
import threading
import time
from pathlib import Path

import numpy as np

from . import CLASSES, config, cpu, images, retrain_claim, retrain_process, runtime, serving
from .hub import HubError, push as hub_push
from .jobs import Busy, JobRunner, JobStore, UnknownJob
from .learning import calibration, estimate, review
from .monitor import ALERT_DROP, Monitor, alert_message, measure_agreement
from .predict import MicroBatcher, Predictor
from .registry import Registry, RegistryError, Version, new_version_id, write_json_atomic
from .retrain_rules import RETRAIN, NothingToLearn
from .state_sync import StateSync
from .uploads import NOT_A_CLASS, UnknownUpload, UploadReport, UploadStore

log = logging.getLogger("cifar")


class UserError(ValueError):
    """Something the user can fix; the message is shown as it is."""


class Service:
    def __init__(self):
        self.registry = Registry(config.registry_dir())
        self.registry.clean_staging()
        self.uploads = UploadStore(config.uploads_dir())
        # With HF_REPO_ID set the Hub holds the state: an empty disk gets it back before serving.
        self.sync = StateSync(self.registry, self.uploads, config.home(), on_current=self._serve_version)
        restored = self.sync.restore()
        if restored:
            log.info(restored)
        serving.seed_registry(self.registry)
        self.reviews = review.ReviewQueue(self.uploads)
        self.monitor = Monitor()
        self.tta_level = cpu.tta_level()
        self._swap_lock = threading.Lock()
        self._field_scoring = threading.Lock()
        self.jobs = JobStore(config.jobs_dir())
        for job_id in self.jobs.mark_interrupted():
            log.warning("job %s was running when the app stopped: marked interrupted", job_id)
        self.retrains = JobRunner(self.jobs, "retrain", self._retrain, expected=(UserError,))
        self._predictor = self._load(self.registry.current().id)
        self._predictor.warm_up()
        log.info("serving %s in %s", self._predictor.version, cpu.describe())
        max_batch = config.max_batch()
        self.batcher = (MicroBatcher(lambda: self._predictor, max_batch, wait_budget_s=config.tta_wait_budget())
                        if max_batch > 1 else None)
        self.sync.start()

    def _serve_version(self, version_id: str) -> None:
        """Serve a version made current elsewhere (another app, through the Hub)."""
        self._serve(self._load(version_id))

    def _load(self, version_id: str) -> Predictor:
        return serving.load_predictor(self.registry.get(version_id), self.tta_level, config.cache_dir())

    @property
    def predictor(self) -> Predictor:
        return self._predictor

    def check_admin(self, key: str | None) -> None:
        expected = config.admin_key()
        if expected and not hmac.compare_digest((key or "").encode(), expected.encode()):
            raise UserError("This action needs the admin key (wrong or missing key).")

    # --- prediction ----------------------------------------------------------------------
    def _timed(self, endpoint: str, fn, count: int = 1):
        started = time.perf_counter()
        try:
            result = fn()
        except Exception:
            self.monitor.record(endpoint, time.perf_counter() - started, ok=False, count=count)
            raise
        self.monitor.record(endpoint, time.perf_counter() - started, count=count)
        return result

    @staticmethod
    def _array(image) -> np.ndarray:
        if image is None or (isinstance(image, str) and not image):
            raise UserError("No image given: upload, drop, paste or take a picture first.")
        try:
            return images.to_array(image)
        except images.ImageError as exc:
            raise UserError(f"Cannot read this image: {exc}.") from None
        except OSError:
            raise UserError("Cannot read this image: the file could not be opened.") from None

    def _observed(self, endpoint: str, fn, count: int = 1) -> np.ndarray:
        """`fn` returns the served images (N, 32, 32, 3) and their probabilities (N, 10): time it,
        and keep both for the field estimate (the images in memory only, see cifar.monitor)."""
        started = time.perf_counter()
        x, probabilities = self._timed(endpoint, fn, count)
        threshold = self._predictor.calibration.get("atc_threshold")
        self.monitor.observe(probabilities, time.perf_counter() - started, threshold, x)
        return probabilities

    def predict(self, source) -> dict[str, float]:
        """Calibrated confidences {class: probability} of one image. Concurrent calls share
        network calls through the micro-batcher (unless CIFAR_MAX_BATCH=1)."""
        def run():
            x = self._array(source)[None]
            if self.batcher:
                return x, self.batcher.predict(x[0])[None]
            return x, self._predictor.predict_arrays(x)
        p = self._observed("predict", run)[0]
        return {c: float(p[i]) for i, c in enumerate(CLASSES)}

    def predict_files(self, paths: list) -> list[list]:
        """Rows (file, class, confidence or error), one a file."""
        if not paths:
            raise UserError("No images given: choose one or more image files.")
        rows, good, arrays = [], [], []
        for path in paths:
            name = Path(path).name
            try:
                arrays.append(images.to_array(path))
                good.append(len(rows))
                rows.append([name, "", None])
            except images.ImageError as exc:
                rows.append([name, "error", str(exc).removeprefix(f"{name}: ")])
        if arrays:
            x = np.stack(arrays)
            probabilities = self._observed("predict_batch", lambda: (x, self._predictor.predict_arrays(x)), count=len(arrays))
            for row_index, p in zip(good, probabilities):
                rows[row_index][1:] = [CLASSES[int(p.argmax())], round(float(p.max()), 4)]
        return rows

    # --- uploads and review ------------------------------------------------------------
    def upload(self, paths: list) -> UploadReport:
        if not paths:
            raise UserError("No files given: choose images or one zip of images.")
        report = self._timed("upload", lambda: self.uploads.add(
            paths, batch=new_version_id("upload"), predict=self._predictor.predict_arrays))
        if report.accepted:
            self.sync.wake()
        return report

    def upload_estimate(self, report: UploadReport) -> dict | None:
        """The current model's estimated accuracy on an upload's images (no labels needed) beside
        its held-out reference, and whether that drop calls for a retrain; None without one."""
        if report.probabilities is None:
            return None
        estimated = estimate.estimate_served(self._predictor, report.probabilities, report.images)
        if estimated is None:
            return None
        reference = self._predictor.calibration["reference_accuracy"]
        return {"images": len(report.probabilities), "estimated": estimated, "reference": reference,
                "retrain_recommended": estimated < reference - ALERT_DROP}

    def review_queue(self, k: int = 10, predicted: str | None = None, key: str | None = None, skip=()) -> list[dict]:
        """The next `k` unlabeled uploads, least sure first (cifar.learning.review), each with
        the model's guess; `predicted` keeps only those it puts in that class."""
        self.check_admin(key)
        if predicted and predicted not in CLASSES:
            raise UserError(f"Unknown class {predicted!r}: use one of {', '.join(CLASSES)}, or nothing for all.")
        return self.reviews.next(self._predictor, max(1, min(int(k), 100)), predicted or None, skip)

    def review_progress(self) -> dict:
        return self.reviews.progress(self._predictor)

    def label(self, upload_id: str, label: str | None, key: str | None = None) -> dict:
        """Store a person's label for one upload: a class name or its digit (0-9), "none" (not
        one of the ten: never trained on), or None to take a review back (undo). The last
        label wins; every earlier one stays in the history."""
        self.check_admin(key)
        if isinstance(label, str):
            label = label.strip().lower()
            label = CLASSES[int(label)] if label.isdigit() and int(label) < len(CLASSES) else label
        try:
            previous = self.uploads.review(str(upload_id or "").strip(), label)
        except UnknownUpload:
            raise UserError(f"No upload with id {str(upload_id)[:64]!r} in the store; ids come from the review "
                            "queue (/review_queue).") from None
        except ValueError:
            raise UserError(f"Unknown class {label!r}: use one of {', '.join(CLASSES)} (or 0-9), or "
                            f"{NOT_A_CLASS!r} for a picture of none of them.") from None
        # The message is part of /label's answer (API clients read it), so it is made here.
        what = {None: "review taken back", NOT_A_CLASS: "marked as none of the ten classes"}.get(label, f"labeled {label}")
        message = f"Upload {upload_id[:10]} {what}"
        message += f" (was {previous}; the history is kept)." if previous and previous != label else "."
        if self.retrains.running:
            message += (" A retrain is running: it trains on the labels it read when it started; this one counts "
                        "from the next retrain.")
        self.sync.wake(labels=True)
        where = self.sync.where()
        if where != "local only":
            message += f" Saved here; on the Hub: {'yes' if where == 'hub' else 'pending (within a minute)'}."
        return {"id": upload_id, "label": label, "previous": previous, "message": message, "hub": where}

    # --- versions ------------------------------------------------------------------------
    def version(self, version_id: str | None) -> Version:
        """A version by id, or the current one for None."""
        try:
            return self.registry.get(version_id) if version_id else self.registry.current()
        except RegistryError as exc:
            raise UserError(str(exc)) from None

    def calibration_of(self, version: Version) -> dict:
        """A version's calibration at the served test-time level ({} if it has none yet)."""
        if version.id == self._predictor.version:
            return self._predictor.calibration
        return calibration.for_version(version, self.tta_level, config.cache_dir())

    def _serve(self, predictor: Predictor) -> None:
        predictor.warm_up()
        with self._swap_lock:  # requests in flight finish on the old predictor
            self._predictor = predictor
        self.monitor.reset_window()  # the field statistics described the previous version

    def _make_current(self, key: str | None, change) -> str:
        """Run a registry change (promote or rollback), then serve the version it made current."""
        self.check_admin(key)
        try:
            version = change()
        except RegistryError as exc:
            raise UserError(str(exc)) from None
        self._serve(self._load(version.id))
        self.sync.wake()  # the Hub records it (the next start, and other apps, serve it)
        return f"Version {version.id} is current now."

    def rollback(self, version_id: str | None, key: str | None) -> str:
        return self._make_current(key, lambda: self.registry.rollback(version_id or None))

    def promote(self, version_id: str, key: str | None) -> str:
        return self._make_current(key, lambda: self.registry.promote(version_id))

    def push(self, version_id: str | None, key: str | None) -> str:
        self.check_admin(key)
        if not config.hub_repo_id():
            raise UserError("No Hub repository configured: set HF_REPO_ID (and HF_TOKEN).")
        version = self.version(version_id)
        try:
            commit = hub_push(version)
        except HubError as exc:
            raise UserError(str(exc)) from None
        return f"Pushed {version.id} to {config.hub_repo_id()} (commit {commit[:10]}, tag {version.id})."

    # --- retraining: a job in the app's store, so no request has to outlive it -----------
    def start_retrain(self, threshold: float | None = None, epochs: int | None = None,
                      key: str | None = None) -> dict:
        """Start a retrain in the background; returns its job (id, state) at once."""
        self.check_admin(key)
        # The app's retrains run in a process of their own (cifar.retrain_process): serving keeps its GIL.
        return self._one_retrain(lambda params: self.retrains.start({**params, "own_process": True}),
                                 threshold, epochs)

    def retrain(self, threshold: float | None = None, epochs: int | None = None, key: str | None = None,
                report=None) -> dict:
        """Run a retrain in this thread and return its result (the command line, benchmarks); it
        is a job like any other, so the Retrain tab and /retrain_status show it too."""
        self.check_admin(key)
        return self._one_retrain(lambda params: self.retrains.run(params, report), threshold, epochs)

    def _one_retrain(self, start, threshold: float | None, epochs: int | None):
        params = {"threshold": RETRAIN["threshold"] if threshold is None else float(threshold),
                  "epochs": None if epochs is None else int(epochs)}
        try:
            if self.retrains.running:
                raise Busy(self.retrains.running)
            # With replicas, one retrain for the whole deployment: claimed on the Hub first.
            params["uploads_revision"] = self.sync.claim_retrain(new_version_id("retrain"))
            try:
                return start(params)
            except Busy:
                raise
            except BaseException:
                self.sync.release_retrain("did not start")
                raise
        except Busy as busy:
            since = busy.job["created"][11:19]
            raise UserError(f"A retrain is already running (since {since} UTC, job {busy.job['id']}); "
                            "wait for it to finish.") from None
        except retrain_claim.Claimed as claimed:
            raise UserError(f"A retrain is already running in this deployment: {claimed}. Only one runs at a "
                            "time; its new version is served here too once promoted.") from None

    def retrain_status(self, job_id: str | None = None) -> dict | None:
        """A retrain job (the latest when `job_id` is empty): state, phase, progress, and its result
        or error once it has ended; None before the first retrain."""
        if not job_id:
            return self.jobs.latest("retrain")
        try:
            return self.jobs.get(str(job_id).strip())
        except UnknownJob:
            raise UserError(f"No retrain job {str(job_id)[:64]!r}; ids come from /retrain_start or "
                            "/retrain_status.") from None

    def wait_for_retrain(self, job_id: str, report=None) -> dict:
        """The retrain job once it has ended (`report(fraction, phase)` hears its progress)."""
        return self.retrains.wait(job_id, report)

    def _retrain(self, params: dict, report) -> dict:
        """Fine-tune the current version on all uploads (cifar.learning.retrain), save it as a new
        version, and serve it if the promotion rule lets it."""
        try:
            result = self._retrain_here(params, report)
        except Exception as exc:
            self.sync.release_retrain(f"failed: {exc}")
            raise
        self.sync.release_retrain(f"{result['version']} {'promoted' if result['promoted'] else 'not promoted'}")
        return result

    def _retrain_here(self, params: dict, report) -> dict:
        serving_now = self._predictor
        try:
            if params.get("own_process"):
                result = retrain_process.run(serving_now.version, serving_now.tta_level, params, report)
                candidate = self._load(result["version"]) if result["promoted"] else None
            else:
                from .learning import retrain as learning_retrain  # Keras: only where a retrain runs

                current = self.registry.get(serving_now.version)
                result, candidate = learning_retrain.run(
                    self.registry, self.uploads, serving_now,
                    serving.holdout_metrics(current, serving_now, config.cache_dir()),
                    params["threshold"], params["epochs"], report)
        except NothingToLearn as exc:
            raise UserError(str(exc)) from None
        result["uploads_revision"] = params.get("uploads_revision")  # the Hub's uploads it learned from
        write_json_atomic(config.cache_dir() / f"holdout-{result['version']}.json", result["after"])
        if result["promoted"]:
            report(0.95, "switching predictions to the new version")
            self._serve(candidate)
        self.sync.wake()  # the new version (and the current one, if promoted) to the Hub
        return result

    # --- monitoring ----------------------------------------------------------------------
    def _retrain_state(self) -> str:
        """"running" here, "retraining on replica X since ..." elsewhere, or "idle"."""
        return "running" if self.retrains.running else self.sync.retrain_elsewhere() or "idle"

    def _score_field(self, predictor: Predictor) -> None:
        """One background scoring at a time: a person opening Monitoring never waits for it."""
        if self._field_scoring.acquire(blocking=False):
            def score():
                try:
                    measure_agreement(self.monitor, predictor)
                except Exception:  # an estimate is never worth a crash; the next look tries again
                    log.exception("scoring the field estimate failed")
                finally:
                    self._field_scoring.release()
            threading.Thread(target=score, name="field-estimate", daemon=True).start()

    def health(self) -> dict:
        """What a load balancer's health check and a cluster report need, cheaply: the version
        served, this replica's name, and the requests it has answered per endpoint."""
        return {"status": "ok", "version": self._predictor.version, "replica": self.sync.replica,
                "retrain": self._retrain_state(), "requests": self.monitor.counts()}

    def monitoring(self) -> dict:
        """The model in the field as plain numbers (the /monitoring endpoint): the rolling
        window's estimated accuracy against the held-out reference, the alert, the mixes.
        Starts scoring the newest served images in the background when due (cifar.monitor)."""
        predictor = self._predictor
        self._score_field(predictor)
        training = self.registry.get(predictor.version).training_distribution()
        total = max(1, sum(training.values()))
        field = self.monitor.field(predictor.calibration, {c: n / total for c, n in training.items()})
        field.update(version=predictor.version, tta_level=predictor.tta_level, uptime_s=round(self.monitor.uptime(), 1),
                     cpu=cpu.info()["model"], precision=cpu.precision(), runtime=runtime.describe(predictor.runtime),
                     tta_levels={str(level): self.batcher.levels[level] for level in range(predictor.tta_level + 1)}
                     if self.batcher else {},
                     retrain=self._retrain_state(), hub=self.sync.status(),
                     endpoints=self.monitor.snapshot())
        if field["alert"]:
            field["alert_message"] = alert_message(field)
        return field
