"""The serving predictor: a loaded model version, batched inference with test-time augmentation."""
import threading

import keras
import numpy as np

from . import CLASSES, images
from .learning import calibration, estimate
from .learning.calibration import softmax

# Logit weights of the test-time views (airbench's TTA level 2): the image and its mirror,
# then both shifted one pixel up-left and down-right. Flip averaging alone: TTA_LEVEL=1.
TTA_LEVEL = 2


def _shift(x: np.ndarray, dy: int, dx: int) -> np.ndarray:
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
    return padded[:, 1 + dy:33 + dy, 1 + dx:33 + dx]


def tta_views(x: np.ndarray, level: int = TTA_LEVEL) -> list[tuple[float, np.ndarray]]:
    if level == 0:
        return [(1.0, x)]
    views = [(0.5, x), (0.5, x[:, :, ::-1])]
    if level >= 2:
        views = [(0.25, v) for _, v in views]
        for dy, dx in ((-1, -1), (1, 1)):
            shifted = _shift(x, dy, dx)
            views += [(0.125, shifted), (0.125, shifted[:, :, ::-1])]
    return views


class Predictor:
    """Wraps one Keras model; thread-safe; `predict_arrays` takes (N, 32, 32, 3) uint8.

    `calibration` (a version's calibration.json) supplies the temperature that makes the
    probabilities honest, and the reference the accuracy estimate and the monitor use; without
    one the probabilities are the network's raw softmax."""

    def __init__(self, model: keras.Model, version: str = "", tta_level: int = TTA_LEVEL, batch_size: int = 256,
                 calibration: dict | None = None):
        self.model, self.version, self.tta_level, self.batch_size = model, version, tta_level, batch_size
        self.calibration = calibration or {}
        self.temperature = float(self.calibration.get("temperature", 1.0))
        self._lock = threading.Lock()

    @classmethod
    def load(cls, path, version: str = "", **kwargs) -> "Predictor":
        from . import model as net

        return cls(net.load(path), version, **kwargs)

    @classmethod
    def for_version(cls, version, tta_level: int = TTA_LEVEL, cache_dir=None) -> "Predictor":
        """A registry version with its calibration (fitted now if it never was)."""
        predictor = cls.load(version.model_path, version=version.id, tta_level=tta_level)
        predictor.calibration = calibration.for_version(version, tta_level, cache_dir, predictor)
        predictor.temperature = float(predictor.calibration["temperature"])
        return predictor

    def logits(self, x: np.ndarray) -> np.ndarray:
        out = np.zeros((len(x), len(CLASSES)), dtype=np.float32)
        if len(x) == 0:
            return out
        views = tta_views(x, self.tta_level)
        # All views of a chunk go through the network as one batch: fewer, larger matmuls.
        chunk = max(1, self.batch_size // len(views))
        for start in range(0, len(x), chunk):
            part = slice(start, start + chunk)
            stacked = np.concatenate([v[part] for _, v in views]).astype(np.float32)
            with self._lock:
                raw = self._run_network(stacked)
            n = min(chunk, len(x) - start)
            out[part] = sum(w * raw[i * n:(i + 1) * n] for i, (w, _) in enumerate(views))
        return out

    def _run_network(self, x: np.ndarray) -> np.ndarray:
        """The compiled predict function on a batch padded to a power of two: one graph per
        size bucket instead of a retrace for every batch size, and no per-op Python overhead."""
        rows = len(x)
        bucket = 1 << max(3, (rows - 1).bit_length())
        if bucket != rows:
            x = np.concatenate([x, np.zeros((bucket - rows, *x.shape[1:]), x.dtype)])
        return np.asarray(self.model.predict_on_batch(x), dtype=np.float32)[:rows]

    def predict_arrays(self, x: np.ndarray) -> np.ndarray:
        """Class probabilities (N, 10), calibrated when the predictor has a calibration."""
        return softmax(self.logits(x), self.temperature)

    def estimate_accuracy(self, probabilities: np.ndarray, x: np.ndarray | None = None) -> float | None:
        """Expected accuracy on unlabeled images from their served `probabilities` (None without a
        calibration); given the images `x` too, checked against a copy adapted to them."""
        if "atc_threshold" not in self.calibration or not len(probabilities):
            return None
        adapted = estimate.adapted_view(self.model, x, self.temperature) if x is not None else None
        return estimate.estimate_accuracy(probabilities, self.calibration["atc_threshold"], adapted)

    def predict_images(self, sources) -> np.ndarray:
        """Probabilities for images of any kind `images.to_array` accepts."""
        return self.predict_arrays(np.stack([images.to_array(s) for s in sources]))

    def warm_up(self) -> None:
        """Trace the graphs of the common batch sizes before the first user waits for them."""
        for n in (1, 2, 4, 8, 16, 32):
            self.predict_arrays(np.zeros((n, 32, 32, 3), np.uint8))


def measure_serving(predictor: Predictor, batch_sizes=(1, 32, 256), seconds: float = 3.0) -> dict:
    """Latency of one image and throughput at several batch sizes, network + TTA only."""
    import time

    rng = np.random.default_rng(0)
    results = {}
    for batch in batch_sizes:
        x = rng.integers(0, 256, size=(batch, 32, 32, 3), dtype=np.uint8)
        predictor.predict_arrays(x)  # warm-up: first call traces the graph
        timings, started = [], time.perf_counter()
        while time.perf_counter() - started < seconds or len(timings) < 3:
            t = time.perf_counter()
            predictor.predict_arrays(x)
            timings.append(time.perf_counter() - t)
        results[str(batch)] = {"latency_ms_p50": round(1000 * float(np.median(timings)), 2),
                               "images_per_s": round(batch / float(np.median(timings)), 1)}
    return results


class MicroBatcher:
    """Collects single-image requests from many threads into one network call.

    While the network runs one batch, new requests queue up; the worker then takes up to
    `max_batch` of them at once. Each caller still gets its own result or its own exception.
    `get_predictor` is read for every batch, so a version swap applies from the next batch.
    """

    def __init__(self, get_predictor, max_batch: int = 32, max_wait_s: float = 0.002):
        import queue

        self.get_predictor, self.max_batch, self.max_wait_s = get_predictor, max_batch, max_wait_s
        self._queue: "queue.Queue" = queue.Queue()
        self.batches = 0
        self.images = 0
        threading.Thread(target=self._run, daemon=True, name="micro-batcher").start()

    def predict(self, array: np.ndarray, timeout: float = 60.0) -> np.ndarray:
        from concurrent.futures import Future

        future: Future = Future()
        self._queue.put((array, future))
        return future.result(timeout=timeout)

    def _run(self) -> None:
        import queue

        while True:
            pending = [self._queue.get()]
            try:
                while len(pending) < self.max_batch:
                    pending.append(self._queue.get(timeout=self.max_wait_s))
            except queue.Empty:
                pass
            try:
                probabilities = self.get_predictor().predict_arrays(np.stack([a for a, _ in pending]))
                for (_, future), p in zip(pending, probabilities):
                    future.set_result(p)
            except Exception as exc:  # the callers see it; the worker lives on
                for _, future in pending:
                    future.set_exception(exc)
            self.batches += 1
            self.images += len(pending)
