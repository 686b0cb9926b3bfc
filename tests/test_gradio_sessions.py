"""The app's Gradio sessions build component configs only when something reads them."""
from gradio import state_holder

from cifar.service import Service
from cifar.ui import build, sessions as gradio_sessions


def test_a_new_session_builds_no_configs_until_read_and_then_the_same_ones():
    demo = build(Service())
    gradio_sessions.install()
    gradio_sessions.install()  # twice: still one wrapper
    init = state_holder.SessionState.__init__
    assert init.lazy_configs and not getattr(init.__wrapped__, "lazy_configs", False)

    lazy = state_holder.SessionState(demo)
    assert dict.__len__(lazy.config_values) == 0 and len(lazy.config_values) > 50  # none built, all known
    eager = state_holder.SessionState.__new__(state_holder.SessionState)
    init.__wrapped__(eager, demo)  # Gradio's own constructor: every config up front
    assert dict(lazy.config_values.items()) == eager.config_values  # a deep link reads the same configs
    assert list(lazy.components) == list(eager.components)

    block_id = next(k for k, c in eager.config_values.items() if "value" in c.get("props", {}))
    fresh = state_holder.SessionState(demo)
    fresh._update_value_in_config(block_id, "changed")  # Gradio's per-session update still lands
    assert fresh.config_values[block_id]["props"]["value"] == "changed"
    assert dict.__len__(fresh.config_values) == 1


def _slow_and_fast_app(keep: bool):
    """A small app with one long event that reports progress until released, and one instant one;
    Gradio's session cache cut to 20 so that 60 one-shot calls overflow it."""
    import threading

    import gradio as gr

    started, release = threading.Event(), threading.Event()

    def slow(progress=gr.Progress()):  # noqa: B008 (Gradio's way to ask for progress)
        started.set()
        step = 0
        while not release.wait(0.05):
            step += 1
            progress((step % 100) / 100, desc="working")
        return "done"

    with gr.Blocks() as demo:
        out = gr.Textbox()
        gr.Button().click(slow, None, out, api_name="slow")
        gr.Button().click(lambda: "fast", None, out, api_name="fast")
    demo.queue(default_concurrency_limit=4)
    demo._queue.pending_messages_per_session.max_size = 20
    if keep:
        gradio_sessions.keep_sessions_with_events(demo)
    demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", quiet=True)
    return demo, started, release


def _one_shot_calls(url: str, count: int) -> None:
    """What a load generator does: POST /call, read the event stream; a new session each time."""
    import httpx

    with httpx.Client(base_url=url, timeout=30) as http:
        for _ in range(count):
            event_id = http.post("/gradio_api/call/fast", json={"data": []}).json()["event_id"]
            assert "fast" in http.get(f"/gradio_api/call/fast/{event_id}").text


def _run_eviction_scenario(keep: bool) -> tuple[str | None, bool]:
    """A long event, 60 one-shot calls while it runs, then its end: its result (None when its
    stream was lost), and whether a second long event's caller then still sees progress (Gradio's
    progress loop alive)."""
    import time

    from gradio_client import Client

    demo, started, release = _slow_and_fast_app(keep)
    try:
        client = Client(demo.local_url, verbose=False)
        job = client.submit(api_name="/slow")
        assert started.wait(30)
        _one_shot_calls(demo.local_url, 60)
        release.set()
        try:
            result = job.result(timeout=2)  # released: it ends within 0.05 s
        except Exception:  # the stream of an evicted session: 404, then the client gives up
            result = None
        started.clear(), release.clear()
        second = Client(demo.local_url, verbose=False).submit(api_name="/slow")
        assert started.wait(30)
        deadline, progress_seen = time.time() + 5, False  # seen within a second when the loop lives
        while not progress_seen and time.time() < deadline:
            progress_seen = second.status().progress_data is not None
            time.sleep(0.1)
        release.set()
        second.result(timeout=30)
        return result, progress_seen
    finally:
        release.set()
        demo.close()


def test_a_long_event_keeps_its_session_and_the_progress_loop_lives_through_an_eviction_storm():
    assert _run_eviction_scenario(keep=True) == ("done", True)


def test_without_the_fix_gradio_evicts_the_long_event_and_kills_its_progress_loop():
    """Gradio 6.31 as it is: the scenario above loses the long event's result and the process's
    progress loop (RESULTS.md). If this starts to fail, Gradio fixed it upstream."""
    assert _run_eviction_scenario(keep=False) != ("done", True)
