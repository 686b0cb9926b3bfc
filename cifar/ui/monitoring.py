"""The Monitoring tab: what serves, how fast, and how accurate the model seems on what people send
(no labels needed), against its held-out reference; refreshed when opened and every few seconds."""
import functools

import gradio as gr
import pandas as pd

from .. import CLASSES, config, tta
from ..service import Service

LOAD_TEST_HELP = """### Load test
```bash
python loadtest/run.py --users 32 --spawn-rate 8 --duration 60s     # headless; starts the app if needed
locust -f loadtest/locustfile.py --host http://127.0.0.1:7860     # web UI at http://localhost:8089
```"""


def hub_text(sync: dict) -> str:
    """Where the state is kept, as a person reads it (cifar.state_sync's status)."""
    if not sync.get("configured"):
        return ("not configured: uploads, labels and new versions live on this disk only (set HF_REPO_ID "
                "and HF_TOKEN to keep them on the Hub)")
    text = (f"{sync['pending_uploads']:,} uploads and {sync['pending_labels']:,} labels waiting to sync to "
            f"{sync['dataset_repo'] or 'no dataset (HF_DATASET_ID=off)'}; current version on {sync['model_repo']}: "
            f"{sync['current_on_hub'] or 'not recorded yet'}; last sync {sync['last_success'] or 'not yet'}; "
            f"this replica is {sync['replica']}, last looked for other replicas' changes {sync['followed'] or 'not yet'}")
    if sync["last_error"]:
        text += f"; **last error {sync['last_error']}**"
    if sync["conflict"]:
        text += f"; {sync['conflict']}"
    return text


def retrain_text(retrain: str) -> str:
    """"idle", "running" (here) or "retraining on replica X since ..." (another replica)."""
    return retrain if retrain.startswith("retraining on") else f"retrain {retrain}"


def status_text(service: Service, field: dict) -> str:
    """The status line (with the alert first, if any) as a person reads it."""
    batcher = service.batcher
    levels = ", ".join(f"{tta.NAMES[int(level)]} {count:,}" for level, count in sorted(field["tta_levels"].items(),
                                                                                       reverse=True))
    batching = (f"micro-batching up to {batcher.max_batch} images a call ({batcher.images} images in "
                f"{batcher.batches} calls so far; test-time views by queue depth: {levels})"
                if batcher else "batching off (CIFAR_MAX_BATCH=1)")
    text = (f"Current version **{field['version']}**, served by **{field['runtime']}**; "
            f"{field['cpu']} (trains in {field['precision']}); up {field['uptime_s'] / 60:.1f} min; "
            f"{batching}; {retrain_text(field['retrain'])}.\n\nHub: {hub_text(field['hub'])}.")
    if field["estimated_accuracy"] is None:
        text += "\n\nNo predictions served yet since the model was loaded: the field estimate starts with the first."
    else:
        if field["estimate_method"] == "agreement":
            how = (f"a copy of the model adapted to the images served agrees with {field['estimate_scored']:,} "
                   "of its answers this much")
        elif field["estimate_method"] == "transport":
            how = ("confidence moved onto an even mix of the ten classes (COT): lower than an adapted copy's "
                   f"agreement with {field['estimate_scored']:,} of its answers")
        elif field["looks_familiar"]:
            how = "from confidence: the images look like the training images"
        else:
            how = "from confidence alone until 200 served images are scored by an adapted copy"
        text += (f"\n\nEstimated accuracy on the last {field['predictions']:,} predictions: "
                 f"**{field['estimated_accuracy']:.1%}** ({how}; held-out reference {field['reference_accuracy']:.1%}; "
                 f"mean confidence {field['mean_confidence']:.1%}).")
    if field["alert"]:
        text = f"### ⚠️ Accuracy drop\n{field['alert_message']}\n\n" + text
    return text


def panel(service: Service) -> tuple:
    """Status text, the per-endpoint table, and the frames of the five plots."""
    field = service.monitoring()
    rows = [[r["endpoint"], r["requests"], r["errors"], r["p50 ms"], r["p95 ms"], r["p99 ms"]]
            for r in field["endpoints"]]
    timeline = pd.DataFrame(field["timeline"], columns=["time", "predictions_per_minute", "latency_p95_ms",
                                                        "estimated_accuracy"])
    timeline["time"] = pd.to_datetime(timeline["time"])
    accuracy = pd.concat([timeline.assign(series="estimated"),
                          timeline.assign(series="held-out reference", estimated_accuracy=field["reference_accuracy"])])
    confidence = pd.DataFrame([{"confidence": (i + 0.5) / len(values), "share": v, "series": series}
                               for series, values in field["confidence_histogram"].items()
                               for i, v in enumerate(values)])
    mix = pd.DataFrame([{"class": c, "share": v, "series": series}
                        for c, shares in field["class_mix"].items() for series, v in shares.items()])
    return status_text(service, field), rows, timeline, timeline, accuracy.dropna(), confidence, mix


def tab(service: Service) -> list:
    """Lays the tab out and keeps it fresh; returns its outputs (the page load fills them)."""
    with gr.Tab("Monitoring") as monitoring_tab:
        status = gr.Markdown(label="Status")
        with gr.Row():
            rate = gr.LinePlot(x="time", y="predictions_per_minute", label="Predictions per minute",
                               y_title="predictions / min")
            latency = gr.LinePlot(x="time", y="latency_p95_ms", label="Latency p95", y_title="ms")
            accuracy = gr.LinePlot(x="time", y="estimated_accuracy", color="series", y_lim=[0, 1],
                                   label="Estimated accuracy (no labels) against the held-out reference",
                                   y_title="accuracy")
        with gr.Row():
            confidence = gr.LinePlot(x="confidence", y="share", color="series", x_lim=[0, 1],
                                     label="Confidence of served predictions against held-out images")
            mix = gr.LinePlot(x="class", y="share", color="series", sort=list(CLASSES),
                              label="Predicted class mix against the training prior")
        stats = gr.Dataframe(headers=["endpoint", "requests", "errors", "p50 ms", "p95 ms", "p99 ms"],
                             label="Since start")
        gr.Markdown(LOAD_TEST_HELP)

    outputs = [status, stats, rate, latency, accuracy, confidence, mix]
    refresh = functools.partial(panel, service)
    monitoring_tab.select(refresh, None, outputs, api_visibility="private")  # fresh the moment it opens
    gr.Timer(config.monitoring_refresh_seconds()).tick(refresh, None, outputs, api_visibility="private")
    gr.api(service.monitoring, api_name="monitoring")
    return outputs
