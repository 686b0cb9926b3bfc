"""Live statistics of what is served: requests and latency per endpoint, and a rolling window of
the last predictions (time, latency, calibrated confidence, class, ATC score) from which the
Monitoring tab estimates the model's accuracy in the field.

The estimate is the one `cifar.learning.estimate` chose: the lower of the agreement of a copy of
the model adapted to the images and COT (over the window's probabilities). For the agreement the
monitor keeps the last `SAMPLE` served images in memory (3 KB each, never written anywhere, gone at
a restart or a model swap); `measure_agreement` scores them, at most once every
`AGREEMENT_EVERY_S`, and each scored prediction keeps its agreement; COT is computed over the window
at the same moment (a linear program, up to 0.8 s: not on each look). Until 200 predictions are
scored, and while ATC's estimate (the share above its threshold) is within 5 points of the held-out
reference, the estimate is ATC's.
Thread-safe, bounded memory; recording one prediction costs a few microseconds."""
import itertools
import threading
import time
from collections import defaultdict, deque

import numpy as np

from . import CLASSES
from .learning import estimate
from .retrain_rules import RETRAIN

WINDOW = 2000          # predictions the field estimate is computed over
SAMPLE = 1000          # the newest served images kept for the adapted copy's agreement
AGREEMENT_EVERY_S = 120  # scoring 1,000 images costs 3-6 s of CPU here: at most every 2 minutes
ALERT_DROP = 0.05      # estimated accuracy this far below the held-out reference raises the alert
MIN_FOR_ALERT = 50     # fewer predictions than this say too little to alert on
BUCKET_S = 15          # the time series' resolution: fine enough to draw a line within a minute


class Monitor:
    def __init__(self, window: int = 10_000, predictions: int = WINDOW):
        self.started = time.time()
        self._lock = threading.Lock()
        self._latencies: dict[str, deque] = defaultdict(lambda: deque(maxlen=window))
        self._requests: dict[str, int] = defaultdict(int)
        self._errors: dict[str, int] = defaultdict(int)
        # One row per served prediction: unix time, latency s, top probability, class, above ATC threshold, id.
        self._served: deque = deque(maxlen=predictions)
        self._probabilities: deque = deque(maxlen=predictions)  # each row of _served's, for COT
        self._images: deque = deque(maxlen=min(SAMPLE, predictions))  # (id, image, served class)
        self._agreement: dict[int, float] = {}  # id -> the adapted copy's probability of the served class
        self._transported: float | None = None  # COT over the window when it was last scored
        self._ids = itertools.count()
        self.scored_at = 0.0

    def record(self, endpoint: str, seconds: float, ok: bool = True, count: int = 1) -> None:
        with self._lock:
            self._requests[endpoint] += count
            self._latencies[endpoint].append(seconds)
            if not ok:
                self._errors[endpoint] += 1

    def observe(self, probabilities: np.ndarray, seconds: float, threshold: float | None,
                images: np.ndarray | None = None) -> None:
        """Keep the statistics of served predictions (N, 10) that took `seconds` in all, and their
        `images` (N, 32, 32, 3) for the adapted copy's agreement."""
        scores = estimate.score(probabilities)
        above = scores > threshold if threshold is not None else np.zeros(len(scores), bool)
        now = time.time()
        with self._lock:
            ids = [next(self._ids) for _ in range(len(probabilities))]
            self._served.extend((now, seconds, float(p.max()), int(p.argmax()), bool(a), i)
                                for p, a, i in zip(probabilities, above, ids))
            self._probabilities.extend(np.asarray(probabilities, np.float32))
            if images is not None:
                self._images.extend((i, image, int(p.argmax())) for i, image, p in zip(ids, images, probabilities))

    def reset_window(self) -> None:
        """Forget the served predictions (after a model swap they describe the previous model)."""
        with self._lock:
            self._served.clear()
            self._probabilities.clear()
            self._images.clear()
            self._agreement.clear()
            self._transported = None

    def unscored(self, reference: float | None = None) -> tuple[list[int], np.ndarray, np.ndarray] | None:
        """The kept images (ids, images, served classes) when enough of them are new since the last
        scoring, that was long enough ago, and the window does not look familiar against the held-out
        `reference` (its estimate is ATC's then: no copy needed); else None."""
        with self._lock:
            kept = list(self._images)
            new = sum(1 for i, _, _ in kept if i not in self._agreement)
            familiar = _looks_familiar(self._served, reference)
        if len(kept) < RETRAIN["adapt_min"] or new == 0 or familiar or time.time() - self.scored_at < AGREEMENT_EVERY_S:
            return None
        ids, images, classes = zip(*kept)
        return list(ids), np.stack(images), np.array(classes)

    def score(self, ids: list[int], agreement: np.ndarray) -> None:
        """Store each prediction's agreement (rows that left the window meanwhile are skipped), and
        COT over the window as it is now."""
        with self._lock:
            probabilities = np.array(self._probabilities)
        transported = estimate.transport(probabilities) if len(probabilities) else None  # outside the lock
        with self._lock:
            self._transported = transported
            self._agreement.update(zip(ids, (float(a) for a in agreement)))
            window = {row[5] for row in self._served}
            self._agreement = {i: a for i, a in self._agreement.items() if i in window}
            self.scored_at = time.time()

    def counts(self) -> dict[str, int]:
        """Requests answered per endpoint since the start."""
        with self._lock:
            return dict(self._requests)

    def snapshot(self) -> list[dict]:
        """One row per endpoint: requests, errors, p50/p95/p99 latency in ms."""
        with self._lock:
            rows = []
            for endpoint in sorted(self._requests):
                lat = np.asarray(self._latencies[endpoint], dtype=np.float64) * 1000
                p50, p95, p99 = (np.percentile(lat, [50, 95, 99]) if len(lat) else (0, 0, 0))
                rows.append({"endpoint": endpoint, "requests": self._requests[endpoint],
                             "errors": self._errors[endpoint], "p50 ms": round(float(p50), 1),
                             "p95 ms": round(float(p95), 1), "p99 ms": round(float(p99), 1)})
            return rows

    def field(self, reference: dict, prior: dict[str, float]) -> dict:
        """The model in the field, as plain numbers: the rolling window's estimated accuracy
        against the held-out reference, the alert, confidence and class mix, per-minute series.

        `reference` is the serving version's calibration (reference_accuracy, confidence_histogram);
        `prior` the share of each class in its training data."""
        with self._lock:
            served = list(self._served)
            agreement = np.array([self._agreement.get(row[5], np.nan) for row in served], float)
            transported = self._transported
        n = len(served)
        times, latency, confidence, classes, above, _ = np.array(served, float).reshape(n, 6).T
        classes = classes.astype(int)
        # Per prediction, what the estimate averages: its agreement where scored, else ATC's 0/1
        # (also when ATC says the images look like the training ones: cifar.learning.estimate).
        scored = int((~np.isnan(agreement)).sum())
        expected = reference.get("reference_accuracy")
        familiar = _looks_familiar(served, expected)
        method = "agreement" if scored >= RETRAIN["adapt_min"] and not familiar else "atc"
        correct = agreement if method == "agreement" else above
        estimated = float(np.nanmean(correct)) if n and "atc_threshold" in reference else None
        # COT is the lower: it is the estimate, each minute scaled to it.
        if method == "agreement" and estimated is not None and transported is not None and transported < estimated:
            method, correct, estimated = "transport", correct * transported / estimated, transported
        alert = bool(estimated is not None and expected is not None and n >= MIN_FOR_ALERT
                     and estimated < expected - ALERT_DROP)
        timeline = []
        if n:
            bucket = (times // BUCKET_S).astype(np.int64)
            for start in np.unique(bucket)[-240:]:  # the last hour at most
                rows = bucket == start
                timeline.append({"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(start) * BUCKET_S)),
                                 "predictions_per_minute": round(float(rows.sum()) * 60 / BUCKET_S, 1),
                                 "latency_p95_ms": round(float(np.percentile(latency[rows], 95)) * 1000, 1),
                                 "estimated_accuracy": _bucket_mean(correct[rows]) if estimated is not None else None})
        reference_hist = np.asarray(reference.get("confidence_histogram") or [0] * 20, float)
        served_hist = np.histogram(confidence, bins=len(reference_hist), range=(0, 1))[0]
        class_counts = np.bincount(classes, minlength=len(CLASSES))
        return {
            "predictions": n, "window": self._served.maxlen,
            "estimated_accuracy": None if estimated is None else round(estimated, 4),
            "estimate_method": method, "estimate_scored": scored, "looks_familiar": familiar,
            "reference_accuracy": None if expected is None else round(float(expected), 4),
            "alert": alert,
            "mean_confidence": round(float(confidence.mean()), 4) if n else None,
            "latency_p95_ms": round(float(np.percentile(latency, 95)) * 1000, 1) if n else None,
            "timeline": timeline, "timeline_step_s": BUCKET_S,
            "confidence_histogram": {"served": (served_hist / max(1, n)).round(4).tolist(),
                                     "held-out reference": (reference_hist / max(1, reference_hist.sum())).round(4).tolist()},
            "class_mix": {c: {"served": round(float(class_counts[i]) / max(1, n), 4),
                              "training prior": round(float(prior.get(c, 0.0)), 4)} for i, c in enumerate(CLASSES)},
        }

    def uptime(self) -> float:
        return time.time() - self.started


def _looks_familiar(served, reference: float | None) -> bool:
    """Whether ATC's estimate over these rows is close to the held-out reference (cifar.learning.estimate)."""
    return bool(served) and estimate.looks_familiar(float(np.mean([row[4] for row in served])), reference)


def _bucket_mean(values: np.ndarray) -> float | None:
    """The mean of a time bucket's estimate values; None where none is scored yet (the newest)."""
    values = values[~np.isnan(values)]
    return round(float(values.mean()), 4) if len(values) else None


def measure_agreement(monitor: Monitor, predictor) -> bool:
    """Score the kept images with a copy of `predictor`'s model adapted to them (see the module's
    text); False when there was nothing to do yet."""
    unscored = monitor.unscored(predictor.calibration.get("reference_accuracy"))
    if unscored is None:
        return False
    ids, images, classes = unscored
    adapted = estimate.adapted_view(predictor.model, images, estimate.copy_temperature(predictor.calibration))
    monitor.score(ids, adapted[np.arange(len(ids)), classes])
    return True


def alert_message(field: dict) -> str | None:
    """What to tell a person when `field` (Monitor.field) raised the alert, and what to do; else None."""
    if not field["alert"]:
        return None
    return (f"Estimated accuracy on the last {field['predictions']:,} predictions is {field['estimated_accuracy']:.1%}, "
            f"more than {ALERT_DROP:.0%} below the {field['reference_accuracy']:.1%} measured on held-out images: "
            "what people send looks unlike the training images. Upload such images (Bulk upload tab) and retrain "
            "(Retrain tab).")
