"""Gradio's queue as the app sets it up (cifar/ui/queue.py), on a real Gradio server in this process:
it polls less often, and it no longer rebuilds its dashboard summary after every event."""
import gradio as gr
import pytest
from gradio_client import Client

from cifar import config
from cifar.ui import queue


def served(patch: bool):
    with gr.Blocks() as demo:
        number = gr.Number()
        number.submit(lambda x: x + 1, number, number, api_name="add")
    demo.queue()
    if patch:
        queue.poll_less(demo)
        queue.skip_analytics(demo)
    demo.launch(prevent_thread_lock=True, enable_monitoring=not patch)
    client = Client(demo.local_url, verbose=False)
    assert [client.predict(i, api_name="/add") for i in range(12)] == list(range(1, 13))
    return demo


@pytest.mark.parametrize("patch", [False, True], ids=["gradio as shipped", "as the app sets it up"])
def test_the_queue_summarises_nothing_and_keeps_one_record_once_patched(patch):
    demo = served(patch)
    try:
        summary, records = demo._queue.cached_event_analytics_summary, demo._queue.event_analytics
        if patch:
            assert summary == {"functions": {}} and len(records) <= 1
            assert demo._queue.sleep_when_free == config.queue_poll_seconds() > 0.001
        else:  # Gradio rebuilds the summary after each event (what the patch removes): 12 calls summed up
            assert summary["functions"]["add"]["total_requests"] == 12 and len(records) == 12
            assert demo._queue.sleep_when_free == 0.001
    finally:
        demo.close()
