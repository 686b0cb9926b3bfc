"""Gradio's queue, polled less often.

Gradio 6.31's queue (`gradio/queueing.py`, `Queue.__init__` and `start_processing`) looks for an
event it can start every 1 ms whenever it has none to start, also while all its workers are busy,
and for progress to send every 10 ms. Both loops run on the one event loop that serves all of the
app's HTTP. Idle, that was ~10% of a core here (`py-spy`: the loop in `epoll_wait`, woken a
thousand times a second); under load it takes turns from the requests. Polling every few
milliseconds instead adds at most that much to when an event starts (a prediction's round trip under
load is hundreds of milliseconds). RESULTS.md has what it buys.
"""
from .. import config


def poll_less(demo) -> None:
    """After `demo.queue()`: look for work every CIFAR_QUEUE_POLL_S, for progress ten times as long."""
    seconds = config.queue_poll_seconds()
    demo._queue.sleep_when_free = seconds
    demo._queue.progress_update_sleep_when_free = max(demo._queue.progress_update_sleep_when_free, 10 * seconds)
