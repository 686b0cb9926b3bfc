"""The Gradio UI: one module per tab (its layout, its handlers, the words, tables and plots it
shows), and `build`, which lays the tabs out and wires what passes between them.

    predict.py     one image or many            upload.py      bulk upload into the store
    retrain.py     retrain, with versions.py     review.py      a person labels the least sure
    metrics.py     a version's scores and plots  monitoring.py  the model in the field
    common.py      what the tabs share           sessions.py    Gradio's per-session cost, trimmed
                                                 queue.py       Gradio's queue: less polling, no analytics
"""
import functools

import gradio as gr

from .. import CLASSES
from ..service import Service
from . import metrics, monitoring, predict, retrain, review, upload
from .review import KEYS_JS

__all__ = ["KEYS_JS", "build"]


def build(service: Service) -> gr.Blocks:
    """The whole app; each named event is an API endpoint callable with gradio_client."""
    # Gradio keeps every uploaded file in its cache (GRADIO_TEMP_DIR); an hour is plenty for any
    # call or page that refers to one, and the cache stays bounded (it may live in memory: tmpfs).
    with gr.Blocks(title="CIFAR-10 classifier", delete_cache=(600, 3600)) as demo:
        gr.Markdown("# CIFAR-10 classifier\nClassifies photos into 10 classes: " + ", ".join(CLASSES) +
                    ". Upload images to retrain it; every model version is kept. Confidences are calibrated: "
                    "of the answers given with 90% confidence, about 90% are right.")
        predict.tab(service)
        upload_plot = upload.tab(service)
        retrain_tab = retrain.tab(service)
        review.tab(service)
        metrics_picker = metrics.tab(service)
        monitoring_outputs = monitoring.tab(service)

        # Between tabs: a new current version refreshes the versions table and both pickers.
        retrain_opened, retrain_outputs = retrain.wire(service, retrain_tab, metrics_picker)
        review.api(service)
        # Opening the page shows the state now, not the state when the app was built.
        demo.load(functools.partial(monitoring.panel, service), None, monitoring_outputs, api_visibility="private")
        demo.load(retrain_opened, None, retrain_outputs, api_visibility="private")  # the latest job, and versions
        demo.load(functools.partial(upload.stored_plot, service), None, upload_plot, api_visibility="private")
    return demo
