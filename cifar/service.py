"""What the app does, as plain functions over one `Service`: the UI (app.py) only wires them.

It owns the registry, the upload store, the serving predictor (swapped atomically after a
promotion) and the monitor. Errors a user can cause are raised as `UserError` with a message
fit to show; nothing here prints secrets.
"""
import csv
import hmac
import json
import logging
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from . import CLASSES, config, cpu, data, evaluate, images, runtime, train, tta
from .learning import calibration, retrain as learning_retrain
from .learning import review
from .learning.review import ReviewQueue
from .monitor import ALERT_DROP, Monitor
from .predict import MicroBatcher, Predictor
from .registry import Registry, RegistryError, new_version_id, write_json_atomic
from .uploads import NOT_A_CLASS, UnknownUpload, UploadStore

log = logging.getLogger("cifar")

UNSURE_BELOW = 0.5           # top (calibrated) confidence under which the UI says "not sure"


class UserError(ValueError):
    """Something the user can fix; the message is shown as it is."""


class Service:
    def __init__(self):
        self.registry = Registry(config.registry_dir())
        self.registry.clean_staging()
        self._seed_registry()
        self.uploads = UploadStore(config.uploads_dir())
        self.reviews = ReviewQueue(self.uploads)
        self.monitor = Monitor()
        self.tta_level = config.tta_level()
        self._swap_lock = threading.Lock()
        self._retrain_lock = threading.Lock()
        self.retrain_started: float | None = None
        self.hub_status = "not configured" if not config.hub_repo_id() else "idle"
        self._predictor = self._load(self.registry.current().id)
        self._predictor.warm_up()
        log.info("serving %s in %s", self._predictor.version, cpu.describe())
        max_batch = config.max_batch()
        self.batcher = (MicroBatcher(lambda: self._predictor, max_batch, wait_budget_s=config.tta_wait_budget())
                        if max_batch > 1 else None)

    def _seed_registry(self) -> None:
        """First start: copy the shipped versions in (or pull from the Hub when asked to)."""
        if config.start_from_hub() and config.hub_repo_id():
            from . import hub

            try:
                version = hub.pull(self.registry, None)
                self.registry.promote(version.id, reason="pulled from the Hub at start")
                return
            except hub.HubError as exc:
                log.warning("starting from the shipped model: %s", exc)
        self.registry.seed_from(config.shipped_models_dir())

    def _load(self, version_id: str) -> Predictor:
        return Predictor.for_version(self.registry.get(version_id), self.tta_level, config.cache_dir())

    @property
    def predictor(self) -> Predictor:
        return self._predictor

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
        """`fn` returns served probabilities (N, 10): time it, and keep their statistics for the
        field estimate (never the images)."""
        started = time.perf_counter()
        probabilities = self._timed(endpoint, fn, count)
        threshold = self._predictor.calibration.get("atc_threshold")
        self.monitor.observe(probabilities, time.perf_counter() - started, threshold)
        return probabilities

    def predict(self, source) -> dict[str, float]:
        """Calibrated confidences {class: probability} of one image. Concurrent calls share
        network calls through the micro-batcher (unless CIFAR_MAX_BATCH=1)."""
        def run():
            x = self._array(source)
            if self.batcher:
                return self.batcher.predict(x)[None]
            return self._predictor.predict_arrays(x[None])
        p = self._observed("predict", run)[0]
        return {c: float(p[i]) for i, c in enumerate(CLASSES)}

    @staticmethod
    def unsure_note(confidences: dict[str, float]) -> str:
        best = max(confidences, key=confidences.get)
        if confidences[best] < UNSURE_BELOW:
            return f"Not sure: the best guess, {best}, has only {confidences[best]:.0%} confidence."
        return f"{best} ({confidences[best]:.0%} confident)"

    def predict_files(self, paths: list) -> tuple[list[list], str]:
        """Rows (file, class, confidence or error) and a CSV file of them."""
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
            probabilities = self._observed("predict_batch", lambda: self._predictor.predict_arrays(np.stack(arrays)),
                                           count=len(arrays))
            for row_index, p in zip(good, probabilities):
                rows[row_index][1:] = [CLASSES[int(p.argmax())], round(float(p.max()), 4)]
        out = Path(tempfile.mkdtemp(prefix="predictions-")) / "predictions.csv"
        with open(out, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["file", "class", "confidence_or_error"])
            writer.writerows(rows)
        return rows, str(out)

    # --- uploads -------------------------------------------------------------------------
    def upload(self, paths: list):
        if not paths:
            raise UserError("No files given: choose images or one zip of images.")
        return self._timed("upload", lambda: self.uploads.add(
            paths, batch=new_version_id("upload"), predict=self._predictor.predict_arrays))

    def upload_plot(self, report=None) -> str | None:
        """Class mix of the store (and of this upload, as the model sees it) beside the training
        mix, as shares; None while the store is empty."""
        records = self.uploads.records()
        if not records:
            return None
        counts = self.uploads.counts(records)
        series = {"training data": self.training_distribution(self.registry.current())}
        if report is not None and report.probabilities is not None and len(report.probabilities):
            predicted = np.bincount(report.probabilities.argmax(axis=1), minlength=len(CLASSES))
            series["this upload, predicted"] = {c: int(predicted[i]) for i, c in enumerate(CLASSES)}
            key = f"{report.batch}-{len(records)}"
        else:
            key = f"store-{len(records)}"
        series.update({f"all uploads, {name}": per_class for name, per_class in counts.items()
                       if sum(per_class.values())})
        return self._plot("uploads", key, lambda: evaluate.plot_distribution(
            series, "Uploads by class, as shares of each series", shares=True))

    def upload_summary(self, report) -> tuple[str, list[list]]:
        """A sentence for people (with the estimated accuracy on these images) and the rejected
        files as table rows."""
        records = self.uploads.records()
        reviewed = sum(r["source"] == "review" for r in records)
        text = (f"**{report.accepted} accepted** ({report.labeled} labeled, {report.accepted - report.labeled} unlabeled), "
                f"{report.duplicates} duplicates skipped, **{len(report.rejected)} rejected**. "
                f"The store holds {len(records)} images" + (f", {reviewed} of them labeled in the Review tab."
                                                             if reviewed else "."))
        estimate = self.upload_estimate(report)
        if estimate:
            text += "\n\n" + estimate
        return text, [[r.file, r.reason] for r in report.rejected]

    def upload_estimate(self, report) -> str:
        """'Estimated accuracy on these N images: 64% (91.8% on held-out images): retraining is
        recommended', from the model's own outputs (no labels needed)."""
        probabilities = report.probabilities
        estimated = (self._predictor.estimate_accuracy(probabilities, report.images)
                     if probabilities is not None else None)
        if estimated is None:
            return ""
        reference = self._predictor.calibration["reference_accuracy"]
        text = (f"Estimated accuracy of the current model on these {len(probabilities):,} images: "
                f"**{estimated:.0%}** ({reference:.1%} on the held-out test images)")
        if estimated < reference - ALERT_DROP:
            return text + ": they look unlike what it was trained on; **retraining on them is recommended** (Retrain tab)."
        return text + ": the model knows images like these; retraining is optional."

    # --- review: a person labels what the model is least sure of -------------------------
    def review_queue(self, k: int = 10, predicted: str | None = None, key: str | None = None, skip=()) -> list[dict]:
        """The next `k` unlabeled uploads, least sure first (cifar.learning.review), each with
        the model's guess; `predicted` keeps only those it puts in that class."""
        self.check_admin(key)
        if predicted and predicted not in CLASSES:
            raise UserError(f"Unknown class {predicted!r}: use one of {', '.join(CLASSES)}, or nothing for all.")
        return self.reviews.next(self._predictor, max(1, min(int(k), 100)), predicted or None, skip)

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
        what = {None: "review taken back", NOT_A_CLASS: "marked as none of the ten classes"}.get(label, f"labeled {label}")
        message = f"Upload {upload_id[:10]} {what}"
        message += f" (was {previous}; the history is kept)." if previous and previous != label else "."
        if self.retrain_started:
            message += (" A retrain is running: it trains on the labels it read when it started; this one counts "
                        "from the next retrain.")
        return {"id": upload_id, "label": label, "previous": previous, "message": message}

    def review_image(self, upload_id: str):
        return review.enlarged(self.uploads, upload_id)

    def review_image_data_url(self, upload_id: str) -> str:
        return review.data_url(self.uploads, upload_id)

    def review_progress(self) -> str:
        done = self.reviews.progress(self._predictor)
        total = done["reviewed"] + done["left"]
        if not total:
            return "Nothing to review: upload unlabeled images first (Bulk upload tab)."
        text = f"**{done['reviewed']} of {total}** unlabeled uploads reviewed; {done['left']} left"
        if done["not_a_class"]:
            text += f" ({done['not_a_class']} marked as none of the classes)"
        if done["guess_checked"]:
            text += (f". The model's guess was right on {done['guess_right']} of the {done['guess_checked']} you "
                     f"labeled ({done['guess_right'] / done['guess_checked']:.0%}): these are its hardest cases")
        return text + ". The next retrain trains on every reviewed label."

    # --- versions ------------------------------------------------------------------------
    def check_admin(self, key: str | None) -> None:
        expected = config.admin_key()
        if expected and not hmac.compare_digest((key or "").encode(), expected.encode()):
            raise UserError("This action needs the admin key (wrong or missing key).")

    def versions_table(self) -> list[list]:
        current = self.registry.current().id
        rows = []
        for version in reversed(self.registry.list()):
            meta, metrics = version.metadata, version.metrics
            accuracy = metrics.get("accuracy")
            rows.append([version.id, "yes" if version.id == current else "", meta.get("kind", ""),
                         meta.get("parent") or "", round(accuracy, 4) if accuracy is not None else None,
                         metrics.get("count"), meta.get("train_seconds")])
        return rows

    def _swap(self, version_id: str) -> None:
        self._serve(self._load(version_id))

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
        self._swap(version.id)
        return f"Version {version.id} is current now."

    def rollback(self, version_id: str | None, key: str | None) -> str:
        return self._make_current(key, lambda: self.registry.rollback(version_id or None))

    def promote(self, version_id: str, key: str | None) -> str:
        return self._make_current(key, lambda: self.registry.promote(version_id))

    # --- retraining ----------------------------------------------------------------------
    def holdout_accuracy(self, version_id: str, predictor: Predictor | None = None) -> dict:
        """Keras' metrics of a version on the shipped held-out images (as a retrain's judge measures
        the new version): from the answers its runtime check stored, else measured; cached."""
        cached = config.cache_dir() / f"holdout-{version_id}.json"
        if cached.exists():
            return json.loads(cached.read_text())
        x, y = data.holdout()
        level = predictor.tta_level if predictor else config.tta_level()
        answers = runtime.stored_keras_answers(self.registry.get(version_id).path, level)
        metrics = (evaluate.compute_metrics(y, answers) if answers is not None
                   else evaluate.evaluate(predictor or self._load(version_id), x, y))
        write_json_atomic(cached, metrics)
        return metrics

    def retrain(self, threshold: float | None = None, epochs: int | None = None, key: str | None = None,
                report=None) -> dict:
        """Fine-tune the current version on all uploads (cifar.learning.retrain), save it as a new
        version, and serve it if the promotion rule lets it; one retrain at a time."""
        self.check_admin(key)
        if not self._retrain_lock.acquire(blocking=False):
            since = time.strftime("%H:%M:%S", time.gmtime(self.retrain_started or time.time()))
            raise UserError(f"A retrain is already running (since {since} UTC); wait for it to finish.")
        try:
            self.retrain_started = time.time()
            serving = self._predictor
            report = report or (lambda f, m: None)
            try:
                result, candidate = learning_retrain.run(
                    self.registry, self.uploads, serving, self.holdout_accuracy(serving.version, serving),
                    threshold if threshold is not None else train.RETRAIN["threshold"], epochs, report)
            except learning_retrain.NothingToLearn as exc:
                raise UserError(str(exc)) from None
            write_json_atomic(config.cache_dir() / f"holdout-{result['version']}.json", result["after"])
            if result["promoted"]:
                report(0.95, "switching predictions to the new version")
                self._serve(candidate)
            self.push_in_background(result["version"])
            return result
        finally:
            self.retrain_started = None
            self._retrain_lock.release()

    # --- Hub -----------------------------------------------------------------------------
    def push_in_background(self, version_id: str) -> None:
        if not config.hub_repo_id():
            return
        from . import hub

        def run():
            self.hub_status = f"pushing {version_id}"
            try:
                hub.push(self.registry.get(version_id))
                self.hub_status = f"pushed {version_id}"
            except hub.HubError as exc:
                self.hub_status = f"push of {version_id} failed: {exc}"
                log.warning("push of %s failed: %s", version_id, exc)

        threading.Thread(target=run, daemon=True, name=f"push-{version_id}").start()

    def push(self, version_id: str | None, key: str | None) -> str:
        self.check_admin(key)
        from . import hub

        if not config.hub_repo_id():
            raise UserError("No Hub repository configured: set HF_REPO_ID (and HF_TOKEN).")
        try:
            version = self.registry.get(version_id) if version_id else self.registry.current()
            commit = hub.push(version)
        except (RegistryError, hub.HubError) as exc:
            raise UserError(str(exc)) from None
        return f"Pushed {version.id} to {config.hub_repo_id()} (commit {commit[:10]}, tag {version.id})."

    # --- metrics -------------------------------------------------------------------------
    def version_metrics(self, version_id: str | None):
        try:
            version = self.registry.get(version_id) if version_id else self.registry.current()
        except RegistryError as exc:
            raise UserError(str(exc)) from None
        return version, version.metrics

    def _calibration(self, version) -> dict:
        if version.id == self._predictor.version:
            return self._predictor.calibration
        return calibration.for_version(version, self.tta_level, config.cache_dir())

    def metrics_view(self, version_id: str | None, compare_id: str | None = None) -> dict:
        """Everything the Metrics tab shows for a version (and a second one side by side)."""
        version, metrics = self.version_metrics(version_id)
        if not metrics:
            raise UserError(f"Version {version.id} has no metrics.")
        meta, calib = version.metadata, self._calibration(version)
        ece = (f"; calibration error (ECE, {calib['bins']} bins) **{calib['ece']:.2%}** "
               f"(uncalibrated {calib['ece_before']:.2%}, temperature {calib['temperature']:.3f})" if calib else "")
        summary = (f"**{version.id}**: accuracy **{metrics['accuracy']:.2%}**, macro F1 {metrics['macro']['f1']:.4f} "
                   f"on {metrics['count']:,} images ({meta.get('eval_data', 'test split')}){ece}; "
                   f"trained {meta.get('train_seconds', '?')} s on {meta.get('train_count', '?')} images.")
        rows = [[c, round(r["precision"], 4), round(r["recall"], 4), round(r["f1"], 4), r["support"]]
                for c, r in metrics["per_class"].items()]
        rows.append(["macro", *(round(metrics["macro"][k], 4) for k in ("precision", "recall", "f1")), metrics["count"]])
        compare, diagrams = [], {version.id: calib}
        if compare_id:
            other, other_metrics = self.version_metrics(compare_id)
            other_calib = self._calibration(other)
            diagrams[other.id] = other_calib
            pairs = [("accuracy", metrics["accuracy"], other_metrics.get("accuracy")),
                     ("macro F1", metrics["macro"]["f1"], other_metrics.get("macro", {}).get("f1")),
                     ("ECE (held-out)", calib.get("ece"), other_calib.get("ece"))]
            pairs += [(f"F1 {c}", metrics["per_class"][c]["f1"], other_metrics.get("per_class", {}).get(c, {}).get("f1"))
                      for c in CLASSES]
            compare = [[name, None if a is None else round(a, 4), None if b is None else round(b, 4),
                        None if a is None or b is None else round(a - b, 4)] for name, a, b in pairs]
        records = self.uploads.records()  # read the manifest once per view
        distribution = {"training data": self.training_distribution(version), **self.uploads.counts(records)}
        drawn = {k: v for k, v in diagrams.items() if v}
        return {
            "summary": summary, "rows": rows, "compare": compare,
            "confusion": self._plot(version.id, "confusion",
                                    lambda: evaluate.plot_confusion(metrics, f"Confusion matrix, {version.id}")),
            "history": self._plot(version.id, "history",
                                  lambda: evaluate.plot_history(version.history, f"Training curves, {version.id}")),
            # The manifest is append-only: its length identifies the upload counts drawn.
            "distribution": self._plot(version.id, f"distribution-{len(records)}",
                                       lambda: evaluate.plot_distribution(distribution, "Class distribution")),
            "confidence": self._plot(version.id, "confidence-calibrated" if calib else "confidence", lambda: (
                evaluate.plot_confidences(calib["confidence_histogram"], "Calibrated confidence on the held-out images")
                if calib else evaluate.plot_confidences(metrics.get("confidence_histogram", [0] * 20),
                                                        "Confidence of predictions on the evaluation images"))),
            "reliability": self._plot(version.id, f"reliability-{'-'.join(drawn)}", lambda: evaluate.plot_reliability(
                drawn)) if drawn else None,
        }

    @staticmethod
    def _plot(version_id: str, name: str, draw) -> str:
        """A PNG drawn once and kept: versions never change, and drawing costs ~0.3 s of CPU."""
        path = config.plots_dir() / version_id / f"{name}.png"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_suffix(".tmp.png")
            evaluate.save_png(draw(), partial)
            partial.replace(path)
        return str(path)

    def monitoring(self) -> dict:
        """The model in the field as plain numbers (the /monitoring endpoint): the rolling
        window's estimated accuracy against the held-out reference, the alert, the mixes."""
        predictor = self._predictor
        training = self.training_distribution(self.registry.get(predictor.version))
        total = max(1, sum(training.values()))
        field = self.monitor.field(predictor.calibration, {c: n / total for c, n in training.items()})
        field.update(version=predictor.version, tta_level=predictor.tta_level, uptime_s=round(self.monitor.uptime(), 1),
                     cpu=cpu.info()["model"], precision=cpu.precision(), runtime=runtime.describe(predictor.runtime),
                     tta_levels={str(level): self.batcher.levels[level] for level in range(predictor.tta_level + 1)}
                     if self.batcher else {},
                     retrain="running" if self.retrain_started else "idle", hub=self.hub_status,
                     endpoints=self.monitor.snapshot())
        if field["alert"]:
            field["alert_message"] = (
                f"Estimated accuracy on the last {field['predictions']:,} predictions is {field['estimated_accuracy']:.1%}, "
                f"more than {ALERT_DROP:.0%} below the {field['reference_accuracy']:.1%} measured on held-out images: "
                "what people send looks unlike the training images. Upload such images (Bulk upload tab) and retrain "
                "(Retrain tab).")
        return field

    def monitoring_view(self) -> tuple[str, list[list], dict]:
        """Status text (with the alert, if any), the per-endpoint table, and the field numbers."""
        field = self.monitoring()
        batching = (f"micro-batching up to {self.batcher.max_batch} images a call "
                    f"({self.batcher.images} images in {self.batcher.batches} calls so far; "
                    f"test-time views by queue depth: {self._levels_text(field['tta_levels'])})"
                    if self.batcher else "batching off (CIFAR_MAX_BATCH=1)")
        text = (f"Current version **{field['version']}**, served by **{field['runtime']}**; "
                f"{field['cpu']} (trains in {field['precision']}); up {field['uptime_s'] / 60:.1f} min; "
                f"{batching}; retrain {field['retrain']}; Hub: {self.hub_status}.")
        if field["estimated_accuracy"] is None:
            text += "\n\nNo predictions served yet since the model was loaded: the field estimate starts with the first."
        else:
            text += (f"\n\nEstimated accuracy on the last {field['predictions']:,} predictions: "
                     f"**{field['estimated_accuracy']:.1%}** (held-out reference {field['reference_accuracy']:.1%}; "
                     f"mean confidence {field['mean_confidence']:.1%}).")
        if field["alert"]:
            text = f"### ⚠️ Accuracy drop\n{field['alert_message']}\n\n" + text
        rows = [[r["endpoint"], r["requests"], r["errors"], r["p50 ms"], r["p95 ms"], r["p99 ms"]]
                for r in field["endpoints"]]
        return text, rows, field

    @staticmethod
    def _levels_text(levels: dict) -> str:
        return ", ".join(f"{tta.NAMES[int(level)]} {count:,}" for level, count in sorted(levels.items(), reverse=True))

    def training_distribution(self, version) -> dict[str, int]:
        meta = version.metadata
        per_class = meta.get("train_count_per_class")
        if per_class:
            return per_class
        count = meta.get("train_count", 0)
        return {c: count // len(CLASSES) for c in CLASSES}
