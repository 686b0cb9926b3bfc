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

from . import CLASSES, config, data, evaluate, images, train, versions
from .monitor import Monitor
from .predict import MicroBatcher, Predictor
from .registry import Registry, RegistryError, new_version_id, write_json_atomic
from .uploads import UploadStore

log = logging.getLogger("cifar")

PROMOTION_TOLERANCE = 0.01   # a new version may be at most 1 point worse on the held-out images
PROMOTION_RULE = (f"The new version becomes current only if it scores no more than {PROMOTION_TOLERANCE * 100:g} "
                  "point below the current one on 2,000 held-out test images.")
UNSURE_BELOW = 0.5           # top confidence under which the UI says "not sure"


class UserError(ValueError):
    """Something the user can fix; the message is shown as it is."""


class Service:
    def __init__(self):
        self.registry = Registry(config.registry_dir())
        self.registry.clean_staging()
        self._seed_registry()
        self.uploads = UploadStore(config.uploads_dir())
        self.monitor = Monitor()
        self.tta_level = config.tta_level()
        self._swap_lock = threading.Lock()
        self._retrain_lock = threading.Lock()
        self.retrain_started: float | None = None
        self.hub_status = "not configured" if not config.hub_repo_id() else "idle"
        self._predictor = self._load(self.registry.current().id)
        self._predictor.warm_up()
        max_batch = config.max_batch()
        self.batcher = MicroBatcher(lambda: self._predictor, max_batch) if max_batch > 1 else None

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
        if self.registry.list():
            return
        shipped = Registry(config.shipped_models_dir())
        for version in shipped.list():
            self.registry.add_folder(version.path)
        if not self.registry.list():
            raise RuntimeError(f"no model versions shipped in {config.shipped_models_dir()}")
        current = shipped.current().id
        self.registry.promote(current, reason="shipped model")

    def _load(self, version_id: str) -> Predictor:
        return Predictor.load(self.registry.get(version_id).model_path, version=version_id, tta_level=self.tta_level)

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

    def predict(self, source) -> dict[str, float]:
        """Confidences {class: probability} of one image. Concurrent calls share network calls
        through the micro-batcher (unless CIFAR_MAX_BATCH=1)."""
        def run():
            x = self._array(source)
            if self.batcher:
                p = self.batcher.predict(x)
            else:
                p = self._predictor.predict_arrays(x[None])[0]
            return {c: float(p[i]) for i, c in enumerate(CLASSES)}
        return self._timed("predict", run)

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
            probabilities = self._timed("predict_batch", lambda: self._predictor.predict_arrays(np.stack(arrays)),
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
            paths, batch=new_version_id("upload"), predict=lambda x: self._predictor.predict_arrays(x).argmax(axis=1)))

    def upload_plot(self) -> str:
        records = self.uploads.records()
        return self._plot("uploads", f"by-class-{len(records)}",
                          lambda: evaluate.plot_distribution(self.uploads.counts(records), "Uploaded images by class"))

    def upload_summary(self, report) -> tuple[str, list[list]]:
        """A sentence for people and the rejected files as table rows."""
        total = len(self.uploads.records())
        text = (f"**{report.accepted} accepted** ({report.labeled} labeled, {report.accepted - report.labeled} unlabeled), "
                f"{report.duplicates} duplicates skipped, **{len(report.rejected)} rejected**. "
                f"The store holds {total} images.")
        return text, [[r.file, r.reason] for r in report.rejected]

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
        predictor = self._load(version_id)
        predictor.warm_up()
        with self._swap_lock:  # requests in flight finish on the old predictor
            self._predictor = predictor

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
        """Metrics of a version on the shipped held-out images, cached per version."""
        cached = config.cache_dir() / f"holdout-{version_id}.json"
        if cached.exists():
            return json.loads(cached.read_text())
        x, y = data.holdout()
        metrics = evaluate.evaluate(predictor or self._load(version_id), x, y)
        write_json_atomic(cached, metrics)
        return metrics

    def retrain(self, threshold: float | None = None, epochs: int | None = None, key: str | None = None,
                report=None) -> dict:
        """Fine-tune the current version on all uploads (pseudo-labelling the unlabeled ones),
        save it as a new version, and promote it if it is not worse on the held-out images."""
        self.check_admin(key)
        if not self._retrain_lock.acquire(blocking=False):
            since = time.strftime("%H:%M:%S", time.gmtime(self.retrain_started or time.time()))
            raise UserError(f"A retrain is already running (since {since} UTC); wait for it to finish.")
        try:
            self.retrain_started = time.time()
            return self._retrain(threshold if threshold is not None else train.RETRAIN["threshold"],
                                 epochs, report or (lambda f, m: None))
        finally:
            self.retrain_started = None
            self._retrain_lock.release()

    def _retrain(self, threshold: float, epochs: int | None, report) -> dict:
        started = time.time()
        x_up, y_up, _ = self.uploads.load()
        if len(x_up) == 0:
            raise UserError("Nothing to retrain on: upload images first (Bulk upload tab).")
        parent = self.registry.current()
        serving = self._predictor
        log.info("retrain started on %d uploads from %s", len(x_up), parent.id)
        report(0.02, "pseudo-labelling unlabeled uploads")
        unlabeled = y_up < 0
        probabilities = (train.upload_probabilities(parent.model_path, x_up[unlabeled], self.tta_level)
                         if unlabeled.any() else np.zeros((0, 10)))
        guessed, confident = train.pseudo_labels(probabilities, threshold, train.RETRAIN["min_fraction"],
                                                 train.RETRAIN["min_recognised"])
        labels = y_up.copy()
        labels[np.flatnonzero(unlabeled)] = guessed
        keep = ~unlabeled
        keep[np.flatnonzero(unlabeled)[confident]] = True
        if not keep.any():
            recognised = float((probabilities.max(axis=1) >= threshold).mean()) if len(probabilities) else 0.0
            raise UserError(
                f"Not retrained, nothing changed: the current model recognises only {recognised:.1%} of the "
                f"{int(unlabeled.sum()):,} unlabeled uploads with {threshold:.0%} confidence or more (a retrain "
                f"needs {train.RETRAIN['min_recognised']:.0%}), so they do not look like pictures of its ten "
                "classes. Upload labeled images (class-named folders or file names) or a lower threshold.")
        report(0.05, "loading original training images to mix in")
        x_replay, y_replay = data.replay(train.RETRAIN["replay"], seed=int(started))
        repeats = train.RETRAIN["upload_repeats"]  # uploads seen this many times an epoch
        x_train = np.concatenate([*[x_up[keep]] * repeats, x_replay])
        y_train = np.concatenate([*[labels[keep]] * repeats, y_replay])
        result = train.finetune(parent.model_path, x_train, y_train, epochs,
                                report=lambda f, m: report(0.08 + 0.72 * f, f"training: {m}"))
        report(0.82, "judging the new version on held-out images")
        before = self.holdout_accuracy(parent.id, serving)
        after = evaluate.evaluate(Predictor(result.model, tta_level=self.tta_level), *data.holdout())
        metadata = {
            "parent": parent.id, "train_seconds": round(result.seconds, 1), "epochs": result.epochs,
            "train_count": int(len(x_train)),
            "train_count_per_class": {c: int((y_train == i).sum()) for i, c in enumerate(CLASSES)},
            "uploads": int(len(x_up)), "uploads_labeled": int((~unlabeled).sum()),
            "pseudo_threshold": threshold, "pseudo_candidates": int(unlabeled.sum()),
            "pseudo_used": int(confident.sum()), "replay_count": int(len(x_replay)),
            "eval_data": "assets/holdout.npz (2,000 CIFAR-10 test images)", "eval_count": after["count"],
        }
        log.info("retrain trained in %.0f s; saving the new version", result.seconds)
        version = versions.save_model_version(self.registry, "retrain", result.model, metadata, after, result.history)
        self.holdout_accuracy(version.id, Predictor(result.model, tta_level=self.tta_level))  # cache it
        promoted = after["accuracy"] >= before["accuracy"] - PROMOTION_TOLERANCE
        if promoted:
            reason = (f"held-out accuracy {after['accuracy']:.2%} vs {before['accuracy']:.2%} "
                      f"(tolerance {PROMOTION_TOLERANCE:.0%})")
            self.registry.promote(version.id, reason=reason)
            report(0.95, "switching predictions to the new version")
            self._swap(version.id)
            why = f"Promoted: {reason}."
        else:
            why = (f"Not promoted: held-out accuracy fell from {before['accuracy']:.2%} to {after['accuracy']:.2%}, "
                   f"more than the {PROMOTION_TOLERANCE:.0%} tolerance. {parent.id} stays current.")
        self.push_in_background(version.id)
        return {"version": version.id, "promoted": promoted, "message": why, "before": before, "after": after,
                "pseudo_used": int(confident.sum()), "pseudo_candidates": int(unlabeled.sum()),
                "labeled": int((~unlabeled).sum()), "seconds": round(time.time() - started, 1)}

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

    def metrics_view(self, version_id: str | None, compare_id: str | None = None) -> dict:
        """Everything the Metrics tab shows for a version (and a second one side by side)."""
        version, metrics = self.version_metrics(version_id)
        if not metrics:
            raise UserError(f"Version {version.id} has no metrics.")
        meta = version.metadata
        summary = (f"**{version.id}**: accuracy **{metrics['accuracy']:.2%}**, macro F1 {metrics['macro']['f1']:.4f} "
                   f"on {metrics['count']:,} images ({meta.get('eval_data', 'test split')}); "
                   f"trained {meta.get('train_seconds', '?')} s on {meta.get('train_count', '?')} images.")
        rows = [[c, round(r["precision"], 4), round(r["recall"], 4), round(r["f1"], 4), r["support"]]
                for c, r in metrics["per_class"].items()]
        rows.append(["macro", *(round(metrics["macro"][k], 4) for k in ("precision", "recall", "f1")), metrics["count"]])
        compare = []
        if compare_id:
            other, other_metrics = self.version_metrics(compare_id)
            pairs = [("accuracy", metrics["accuracy"], other_metrics.get("accuracy")),
                     ("macro F1", metrics["macro"]["f1"], other_metrics.get("macro", {}).get("f1"))]
            pairs += [(f"F1 {c}", metrics["per_class"][c]["f1"], other_metrics.get("per_class", {}).get(c, {}).get("f1"))
                      for c in CLASSES]
            compare = [[name, round(a, 4), None if b is None else round(b, 4),
                        None if b is None else round(a - b, 4)] for name, a, b in pairs]
        records = self.uploads.records()  # read the manifest once per view
        distribution = {"training data": self.training_distribution(version), **self.uploads.counts(records)}
        return {
            "summary": summary, "rows": rows, "compare": compare,
            "confusion": self._plot(version.id, "confusion",
                                    lambda: evaluate.plot_confusion(metrics, f"Confusion matrix, {version.id}")),
            "history": self._plot(version.id, "history",
                                  lambda: evaluate.plot_history(version.history, f"Training curves, {version.id}")),
            # The manifest is append-only: its length identifies the upload counts drawn.
            "distribution": self._plot(version.id, f"distribution-{len(records)}",
                                       lambda: evaluate.plot_distribution(distribution, "Class distribution")),
            "confidence": self._plot(version.id, "confidence", lambda: evaluate.plot_confidences(
                metrics.get("confidence_histogram", [0] * 20), "Confidence of predictions on the evaluation images")),
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

    def monitoring_view(self) -> tuple[str, list[list]]:
        rows = self.monitor.snapshot()
        batching = (f"micro-batching up to {self.batcher.max_batch} images a call "
                    f"({self.batcher.images} images in {self.batcher.batches} calls so far)"
                    if self.batcher else "batching off (CIFAR_MAX_BATCH=1)")
        retrain = "running" if self.retrain_started else "idle"
        text = (f"Current version **{self._predictor.version}**; up {self.monitor.uptime() / 60:.1f} min; "
                f"{batching}; retrain {retrain}; Hub: {self.hub_status}.")
        return text, [[r["endpoint"], r["requests"], r["errors"], r["p50 ms"], r["p95 ms"], r["p99 ms"]] for r in rows]

    def training_distribution(self, version) -> dict[str, int]:
        meta = version.metadata
        per_class = meta.get("train_count_per_class")
        if per_class:
            return per_class
        count = meta.get("train_count", 0)
        return {c: count // len(CLASSES) for c in CLASSES}
