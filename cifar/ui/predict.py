"""The Predict tab: one image (file, webcam, clipboard or an example) or many at once."""
import csv
import tempfile
from pathlib import Path

import gradio as gr
import pandas as pd

from .. import CLASSES
from ..service import Service
from .common import ASSETS, shown

EXAMPLES = [[str(ASSETS / "examples" / f"{c}.png")] for c in CLASSES]
UNSURE_BELOW = 0.5           # top (calibrated) confidence under which the tab says "not sure"


def unsure_note(confidences: dict[str, float]) -> str:
    best = max(confidences, key=confidences.get)
    if confidences[best] < UNSURE_BELOW:
        return f"Not sure: the best guess, {best}, has only {confidences[best]:.0%} confidence."
    return f"{best} ({confidences[best]:.0%} confident)"


def bars(confidences: dict | None) -> pd.DataFrame:
    confidences = confidences or {}
    return pd.DataFrame({"class": list(CLASSES), "confidence": [confidences.get(c, 0.0) for c in CLASSES]})


def with_csv(rows: list[list]) -> tuple[list[list], str]:
    """The rows, and a CSV file of them to download."""
    out = Path(tempfile.mkdtemp(prefix="predictions-")) / "predictions.csv"
    with open(out, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "class", "confidence_or_error"])
        writer.writerows(rows)
    return rows, str(out)


def tab(service: Service) -> None:
    @shown
    def predict(image):
        """Classify one image (any size; PNG, JPEG, WebP, GIF, BMP or TIFF) into one of the CIFAR-10 classes.

        Args:
            image: the image file to classify.
        Returns:
            The top classes with their confidences, and a one-line note.
        """
        # Raw upload payload (preprocess=False): our decoder, not Gradio's, judges the bytes.
        confidences = service.predict(image.get("path") if isinstance(image, dict) else image)
        # The Label keeps only the top three; all ten go to the bar chart through a State,
        # which API clients do not see (the endpoint still returns label and note).
        return confidences, unsure_note(confidences), confidences

    with gr.Tab("Predict"):
        with gr.Row():
            with gr.Column():
                image = gr.Image(type="filepath", sources=["upload", "webcam", "clipboard"], label="Image",
                                 elem_id="query-image")
                classify = gr.Button("Classify", variant="primary")
            with gr.Column():
                label = gr.Label(num_top_classes=3, label="Top classes")
                note = gr.Markdown(label="Note")
                all_confidences = gr.State()
                chart = gr.BarPlot(x="class", y="confidence", y_lim=[0, 1], label="All ten classes",
                                   sort=list(CLASSES), elem_id="all-classes")
        gr.Examples(EXAMPLES, inputs=image, label="Examples: one per class")
        with gr.Accordion("Many images at once", open=False):
            many = gr.File(file_count="multiple", file_types=["image"], label="Images")
            classify_many = gr.Button("Classify all")
            table = gr.Dataframe(headers=["file", "class", "confidence / error"], label="Predictions")
            csv_file = gr.File(label="CSV download")

    classify.click(predict, image, [label, note, all_confidences], api_name="predict", concurrency_limit=None,
                   preprocess=False).then(bars, all_confidences, chart, api_visibility="private")
    image.upload(predict, image, [label, note, all_confidences], api_visibility="private", preprocess=False).then(
        bars, all_confidences, chart, api_visibility="private")
    @shown
    def predict_batch(paths):
        """Classify many images at once: a row (file, class, confidence or error) for each, and a CSV."""
        return with_csv(service.predict_files(paths))

    classify_many.click(predict_batch, many, [table, csv_file], api_name="predict_batch")
