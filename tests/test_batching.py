"""The micro-batcher gathers concurrent requests into shared network calls, each caller keeping
its own result, and an error reaches only the calls of its batch; the worker survives it."""
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


def test_concurrent_requests_share_calls_and_keep_their_results():
    model = SlowEcho()
    batcher = MicroBatcher(lambda: model, max_batch=32)
    images = [np.full((32, 32, 3), i, np.uint8) for i in range(64)]
    with ThreadPoolExecutor(32) as pool:
        results = list(pool.map(batcher.predict, images))
    assert [int(r[0]) for r in results] == list(range(64))
    assert len(model.calls) < 32 and max(model.calls) > 1 and sum(model.calls) == 64


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
