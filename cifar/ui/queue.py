"""Gradio's queue, polled less often and without its per-event analytics.

Gradio 6.31's queue (`gradio/queueing.py`, `Queue.__init__` and `start_processing`) looks for an
event it can start every 1 ms whenever it has none to start, also while all its workers are busy,
and for progress to send every 10 ms. Both loops run on the one event loop that serves all of the
app's HTTP. Idle, that was ~10% of a core here (`py-spy`: the loop in `epoll_wait`, woken a
thousand times a second); under load it takes turns from the requests. Polling every few
milliseconds instead adds at most that much to when an event starts (a prediction's round trip under
load is hundreds of milliseconds). RESULTS.md has what it buys.

After every event the same queue also rebuilds a summary of its last 10,000 events for Gradio's
own monitoring dashboard (`Queue.compute_analytics_summary`: a pandas DataFrame, a groupby and
percentiles, in a worker thread that holds the GIL the event loop needs). The app has its own
Monitoring and launches with Gradio's dashboard off, so nobody reads that summary; under load it was
~15% of the process's CPU samples (`py-spy`).
"""
import sys

from .. import config


def poll_less(demo) -> None:
    """After `demo.queue()`: look for work every CIFAR_QUEUE_POLL_S, for progress ten times as long."""
    seconds = config.queue_poll_seconds()
    demo._queue.sleep_when_free = seconds
    demo._queue.progress_update_sleep_when_free = max(demo._queue.progress_update_sleep_when_free, 10 * seconds)


def skip_analytics(demo) -> None:
    """After `demo.queue()`: never rebuild the summary of Gradio's monitoring dashboard (the app
    launches with `enable_monitoring=False`), and keep one event's record instead of 10,000."""
    demo._queue.ANAYLTICS_CACHE_FREQUENCY = sys.maxsize  # (sic: Gradio's spelling)
    demo._queue.ANALYTICS_MAX_EVENTS = 1
