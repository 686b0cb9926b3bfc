"""The micro-batcher gathers concurrent requests into shared network calls, each caller keeping
its own result, and an error reaches only the calls of its batch; the worker survives it."""
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from cifar.predict import MicroBatcher


class SlowEcho:
    """Stands in for the network: 20 ms a call, returns each image's first pixel as its 'probabilities'."""

    tta_level = 2

    def __init__(self):
        self.calls, self.fail, self.levels = [], False, []

    def predict_arrays(self, x, level=None):
        self.levels.append(level)
        self.calls.append(len(x))
        time.sleep(0.02)
        if self.fail:
            raise RuntimeError("network failed")
        return x[:, 0, 0, :1].astype(np.float32)


class GatedEcho(SlowEcho):
    """The first call waits at a gate until the test opens it: meanwhile requests pile up."""

    def __init__(self):
        super().__init__()
        self.gate, self.entered, self.first_batch = threading.Event(), threading.Event(), 0

    def predict_arrays(self, x, level=None):
        if not self.entered.is_set():
            self.first_batch = len(x)
            self.entered.set()
        self.gate.wait(60)
        return super().predict_arrays(x, level)


def test_requests_that_queue_during_a_call_share_the_next_ones_and_keep_their_results():
    model = GatedEcho()
    batcher = MicroBatcher(lambda: model, max_batch=32)
    images = [np.full((32, 32, 3), i, np.uint8) for i in range(64)]
    with ThreadPoolExecutor(64) as pool:
        futures = [pool.submit(batcher.predict, image) for image in images]
        assert model.entered.wait(30)                      # the first batch is in the network
        deadline = time.time() + 30
        while batcher._queue.qsize() < 64 - model.first_batch and time.time() < deadline:
            time.sleep(0.01)                               # the rest arrive while it runs
        first = batcher._queue.qsize()
        model.gate.set()
        results = [f.result(60) for f in futures]
    assert [int(r[0]) for r in results] == list(range(64))  # each caller its own answer
    assert sum(model.calls) == 64 and first == 64 - model.calls[0]
    assert model.calls[1:] == [32] * (first // 32) + ([first % 32] if first % 32 else [])  # full batches after


def test_an_error_reaches_its_callers_and_the_worker_lives_on():
    model = SlowEcho()
    batcher = MicroBatcher(lambda: model, max_batch=8)
    model.fail = True
    with pytest.raises(RuntimeError, match="network failed"):
        batcher.predict(np.zeros((32, 32, 3), np.uint8))
    model.fail = False
    assert batcher.predict(np.full((32, 32, 3), 7, np.uint8))[0] == 7


def test_swapped_predictor_applies_to_the_next_batch():
    first, second = SlowEcho(), SlowEcho()
    current = {"p": first}
    batcher = MicroBatcher(lambda: current["p"], max_batch=4)
    batcher.predict(np.zeros((32, 32, 3), np.uint8))
    current["p"] = second
    batcher.predict(np.zeros((32, 32, 3), np.uint8))
    assert first.calls == [1] and second.calls == [1]


def test_a_deep_queue_gets_fewer_views_and_full_views_come_back_as_it_drains():
    batcher = MicroBatcher(lambda: SlowEcho(), max_batch=32, wait_budget_s=0.25)
    assert batcher.level(2, 32) == 2  # nothing measured yet: full views
    batcher.seconds_per_view = 0.0025  # an AVX2-class CPU: 6 views x 32 images = 0.48 s of work
    assert batcher.level(2, 32) == 1 and batcher.level(2, 64) == 0
    assert batcher.level(2, 8) == 2  # drained: back to 6 views
    assert batcher.level(1, 8) == 1  # never more than the predictor's own level


def test_levels_served_are_counted_per_prediction():
    model = SlowEcho()
    batcher = MicroBatcher(lambda: model, max_batch=8, wait_budget_s=0.0)  # any queue is too deep
    batcher.predict(np.zeros((32, 32, 3), np.uint8))  # the first batch measures the network
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(batcher.predict, [np.zeros((32, 32, 3), np.uint8)] * 16))
    assert batcher.levels[2] == 1 and batcher.levels[0] == 16
    assert model.levels[0] == 2 and set(model.levels[1:]) == {0}
