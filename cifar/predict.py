"""The serving predictor: a network with its test-time views and its temperature, thread-safe,
run through a checked OpenVINO model (cifar.runtime) or Keras; and the micro-batcher that shares
its network calls between concurrent requests. Loading a registry version into a Predictor, with
its calibration, is cifar.serving's job."""
import collections
import logging
import queue
import threading
import time
from concurrent.futures import Future

import numpy as np

from . import images, runtime, tta
from .logits import softmax

log = logging.getLogger("cifar")


class Predictor:
    """Wraps one Keras model; thread-safe; `predict_arrays` takes (N, 32, 32, 3) uint8.

    `calibration` (a version's calibration.json) supplies the temperature that makes the
    probabilities honest, and the reference the accuracy estimate and the monitor use; without
    one the probabilities are the network's raw softmax.

    Made by `load`, the Keras model is read from disk on first use only: where a checked OpenVINO
    model serves, nothing needs it until an upload is pseudo-labelled or estimated, so an app
    serving the shipped version starts without TensorFlow (seconds and hundreds of MB it skips)."""

    def __init__(self, model=None, version: str = "", tta_level: int = tta.LEVEL, batch_size: int = 256,
                 calibration: dict | None = None, network=None, runtime: dict | None = None, model_path=None):
        self.version, self.tta_level, self.batch_size = version, tta_level, batch_size
        self._model, self._model_path, self._keras_run = model, model_path, None
        self._model_lock = threading.Lock()
        self.calibration = calibration or {}
        self.temperature = float(self.calibration.get("temperature", 1.0))
        # What runs the network: a checked OpenVINO model, or Keras (and why, for Monitoring).
        self.network = network or self._keras
        self.runtime = runtime or {"runtime": "keras", "why": "Keras model in memory"}
        self._lock = threading.Lock()

    @classmethod
    def load(cls, path, version: str = "", **kwargs) -> "Predictor":
        return cls(version=version, model_path=path, **kwargs)

    @property
    def model(self):
        """The Keras model (loaded now if it has not been)."""
        with self._model_lock:
            if self._model is None:
                from . import model as net  # Keras, imported where it is first needed (see the class)

                self._model = net.load(self._model_path)
            return self._model

    def _keras(self, x: np.ndarray) -> np.ndarray:
        """The Keras model as the network (float32 pixels -> logits)."""
        if self._keras_run is None:
            from . import model as net

            self._keras_run = net.keras_network(self.model)
        return self._keras_run(x)

    def calibrate(self, calibration: dict) -> None:
        """Serve with `calibration`'s temperature (a version's calibration.json)."""
        self.calibration, self.temperature = calibration, float(calibration["temperature"])

    def use_runtime(self, folder, cache_dir=None, keras_answers=None) -> None:
        """Serve through the checked OpenVINO model in `folder` (cifar.runtime) if it passes;
        otherwise keep Keras, with the reason in `runtime` (and the log). `keras_answers`: see
        runtime.load."""
        network, self.runtime = runtime.load(folder, lambda: self.model, self.tta_level, cache_dir, keras_answers)
        if network is not None:
            self.network = network
        log.log(logging.INFO if network else logging.WARNING, "%s served by %s", self.version or "model",
                runtime.describe(self.runtime))

    def _locked(self, batch: np.ndarray) -> np.ndarray:
        """The network, one call at a time (an OpenVINO network has one infer request)."""
        with self._lock:
            return self.network(batch)

    def logits(self, x: np.ndarray, level: int | None = None) -> np.ndarray:
        """Logits of uint8 images over the views of TTA `level` (the predictor's own by default)."""
        return tta.logits(self._locked, x, self.tta_level if level is None else level, self.batch_size)

    def logits_by_level(self, x: np.ndarray) -> dict[int, np.ndarray]:
        """`logits` at the predictor's level and every level below it, from one pass (tta.logits_by_level)."""
        return tta.logits_by_level(self._locked, x, self.tta_level, self.batch_size)

    def predict_arrays(self, x: np.ndarray, level: int | None = None) -> np.ndarray:
        """Class probabilities (N, 10), calibrated when the predictor has a calibration."""
        return softmax(self.logits(x, level), self.temperature)

    def predict_images(self, sources) -> np.ndarray:
        """Probabilities for images of any kind `images.to_array` accepts."""
        return self.predict_arrays(np.stack([images.to_array(s) for s in sources]))

    def warm_up(self) -> None:
        """Trace the graphs of the common batch sizes before the first user waits for them."""
        for n in (1, 2, 4, 8, 16, 32):
            self.predict_arrays(np.zeros((n, 32, 32, 3), np.uint8))


def measure_serving(predictor: Predictor, batch_sizes=(1, 32, 256), seconds: float = 1.0) -> dict:
    """Latency of one image and throughput at several batch sizes, network + TTA only: the median
    of the calls made in `seconds` (at least 3) per size. `train` records it with each version at
    1 s a size; bench-serving measures longer."""
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

    Test-time augmentation under load: each batch is served with the most views (cifar.tta) for
    which the work of everything queued fits in `wait_budget_s`, by the network's measured time
    per view. A short queue gets the full 6 views; a deep one flip only or the image alone, and
    the full level comes back as the queue drains. `levels` counts predictions per level.
    """

    def __init__(self, get_predictor, max_batch: int = 32, max_wait_s: float = 0.002, wait_budget_s: float = 0.25):
        self.get_predictor, self.max_batch, self.max_wait_s = get_predictor, max_batch, max_wait_s
        self.wait_budget_s = wait_budget_s
        self._queue: queue.Queue = queue.Queue()
        self.batches = 0
        self.images = 0
        self.levels: collections.Counter = collections.Counter()
        self.seconds_per_view: float | None = None  # moving average, measured on served batches
        threading.Thread(target=self._run, daemon=True, name="micro-batcher").start()

    def predict(self, array: np.ndarray, timeout: float = 60.0) -> np.ndarray:
        future: Future = Future()
        self._queue.put((array, future))
        return future.result(timeout=timeout)

    def level(self, full: int, waiting: int) -> int:
        """The TTA level for a batch while `waiting` images are queued (this batch included)."""
        if self.seconds_per_view is None:
            return full
        for level in range(full, 0, -1):
            if waiting * tta.VIEWS[level] * self.seconds_per_view <= self.wait_budget_s:
                return level
        return 0

    def _run(self) -> None:
        while True:
            pending = [self._queue.get()]
            try:
                while len(pending) < self.max_batch:
                    pending.append(self._queue.get(timeout=self.max_wait_s))
            except queue.Empty:
                pass
            try:
                predictor = self.get_predictor()
                level = self.level(predictor.tta_level, len(pending) + self._queue.qsize())
                started = time.perf_counter()
                probabilities = predictor.predict_arrays(np.stack([a for a, _ in pending]), level)
                per_view = (time.perf_counter() - started) / (len(pending) * tta.VIEWS[level])
                self.seconds_per_view = per_view if self.seconds_per_view is None else (
                    0.8 * self.seconds_per_view + 0.2 * per_view)
                self.levels[level] += len(pending)
                for (_, future), p in zip(pending, probabilities):
                    future.set_result(p)
            except Exception as exc:  # the callers see it; the worker lives on
                for _, future in pending:
                    future.set_exception(exc)
            self.batches += 1
            self.images += len(pending)
