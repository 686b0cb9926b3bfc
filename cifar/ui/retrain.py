"""The Retrain tab: fine-tune the current model on the uploads, the verdict of the promotion
rule, before-and-after numbers, and the versions panel."""
from typing import NamedTuple

import gradio as gr

from .. import config, train
from ..learning.retrain import PROMOTION_RULE
from ..service import Service
from . import versions as versions_panel
from .common import shown, versions_update


class Tab(NamedTuple):
    threshold: gr.Slider
    epochs: gr.Slider
    admin_key: gr.Textbox
    button: gr.Button
    summary: gr.Markdown
    before_after: gr.Dataframe
    versions: versions_panel.Panel


def result_text(result: dict, threshold: float) -> str:
    """What a finished retrain did, in words: the verdict, the data it used, and where a slow
    CPU made it compress its schedule."""
    text = (f"### {result['message']}\nNew version **{result['version']}** in {result['seconds']} s: "
            f"{result['labeled']} labeled uploads ({result['reviewed']} reviewed by hand), "
            f"{result['pseudo_used']} of {result['pseudo_candidates']} "
            f"unlabeled ones pseudo-labeled at >= {threshold:.1%} confidence.")
    run, planned = result.get("train_steps") or (0, 0)
    if run < planned:
        text += (f" Trained {run} of {planned} planned steps, the schedule fitted into the "
                 f"{result['train_budget_seconds']:.0f} s this machine allows for a 3-minute retrain.")
    return text


def before_after_rows(result: dict) -> list[list]:
    before, after, estimated = result["before"], result["after"], result["estimated_on_uploads"]
    return [["held-out accuracy", round(before["accuracy"], 4), round(after["accuracy"], 4)],
            ["held-out macro F1", round(before["macro"]["f1"], 4), round(after["macro"]["f1"], 4)],
            [f"estimated accuracy on the {result['uploads']:,} uploads (no labels)",
             estimated["before"] and round(estimated["before"], 4), estimated["after"] and round(estimated["after"], 4)]]


def tab(service: Service) -> Tab:
    with gr.Tab("Retrain"):
        gr.Markdown("Fine-tunes the current model on every upload: labeled images keep their labels; unlabeled "
                    "ones are labeled by the current model, re-calibrated to the uploads' own statistics, when "
                    "its calibrated confidence reaches the threshold (and each class's surest half regardless); "
                    "original training images are mixed in so nothing is forgotten. "
                    f"{PROMOTION_RULE} Predictions keep being served meanwhile.")
        with gr.Row():
            threshold = gr.Slider(0.5, 0.999, value=train.RETRAIN["threshold"], step=0.001,
                                  label="Pseudo-label confidence threshold (calibrated probability of being right)")
            epochs = gr.Slider(1, 10, value=train.RETRAIN["epochs"], step=1, label="Epochs")
            admin_key = gr.Textbox("", label="Admin key", type="password", visible=config.admin_key() is not None)
        button = gr.Button("Retrain on uploads", variant="primary")
        summary = gr.Markdown(label="Result")
        before_after = gr.Dataframe(headers=["metric", "before", "after"], label="Before and after")
        versions = versions_panel.panel(service)
    return Tab(threshold, epochs, admin_key, button, summary, before_after, versions)


def wire(service: Service, retrain: Tab, metrics_picker: gr.Dropdown) -> None:
    """The retrain button and the versions panel (their results refresh the Metrics tab's picker)."""
    @shown
    def run(threshold, epochs, key, progress=gr.Progress()):  # noqa: B008 (Gradio's way to ask for progress)
        result = service.retrain(threshold, int(epochs), key, report=lambda f, m: progress(f, desc=m))
        return (result_text(result, threshold), before_after_rows(result), *versions_update(service))

    retrain.button.click(run, [retrain.threshold, retrain.epochs, retrain.admin_key],
                         [retrain.summary, retrain.before_after, retrain.versions.table, retrain.versions.picker,
                          metrics_picker], api_name="retrain")
    versions_panel.wire(service, retrain.versions, retrain.admin_key, metrics_picker)
