"""Live statistics of what is served: requests and latency per endpoint, and a rolling window of
the last predictions (time, latency, calibrated confidence, class, ATC score) from which the
Monitoring tab estimates the model's accuracy in the field. Only statistics are kept, never the
images. Thread-safe, bounded memory; recording one prediction costs a few microseconds."""
import threading
import time
from collections import defaultdict, deque

import numpy as np

from . import CLASSES
from .learning import estimate

WINDOW = 2000          # predictions the field estimate is computed over
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
        # One row per served prediction: unix time, latency s, top probability, class, above ATC threshold.
        self._served: deque = deque(maxlen=predictions)

    def record(self, endpoint: str, seconds: float, ok: bool = True, count: int = 1) -> None:
        with self._lock:
            self._requests[endpoint] += count
            self._latencies[endpoint].append(seconds)
            if not ok:
                self._errors[endpoint] += 1

    def observe(self, probabilities: np.ndarray, seconds: float, threshold: float | None) -> None:
        """Keep the statistics of served predictions (N, 10) that took `seconds` in all."""
        scores = estimate.score(probabilities)
        above = scores > threshold if threshold is not None else np.zeros(len(scores), bool)
        now = time.time()
        rows = [(now, seconds, float(p.max()), int(p.argmax()), bool(a)) for p, a in zip(probabilities, above)]
        with self._lock:
            self._served.extend(rows)

    def reset_window(self) -> None:
        """Forget the served predictions (after a model swap they describe the previous model)."""
        with self._lock:
            self._served.clear()

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
        n = len(served)
        times, latency, confidence, classes, above = np.array(served, float).reshape(n, 5).T
        classes, above = classes.astype(int), above.astype(bool)
        expected = reference.get("reference_accuracy")
        estimated = float(above.mean()) if n and "atc_threshold" in reference else None
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
                                 "estimated_accuracy": round(float(above[rows].mean()), 4) if estimated is not None else None})
        reference_hist = np.asarray(reference.get("confidence_histogram") or [0] * 20, float)
        served_hist = np.histogram(confidence, bins=len(reference_hist), range=(0, 1))[0]
        class_counts = np.bincount(classes, minlength=len(CLASSES))
        return {
            "predictions": n, "window": self._served.maxlen,
            "estimated_accuracy": None if estimated is None else round(estimated, 4),
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


def alert_message(field: dict) -> str | None:
    """What to tell a person when `field` (Monitor.field) raised the alert, and what to do; else None."""
    if not field["alert"]:
        return None
    return (f"Estimated accuracy on the last {field['predictions']:,} predictions is {field['estimated_accuracy']:.1%}, "
            f"more than {ALERT_DROP:.0%} below the {field['reference_accuracy']:.1%} measured on held-out images: "
            "what people send looks unlike the training images. Upload such images (Bulk upload tab) and retrain "
            "(Retrain tab).")
