"""The Metrics tab: a version's accuracy, per-class scores, calibration and plots, optionally side
by side with another version."""
import gradio as gr

from .. import CLASSES, data, evaluate
from ..registry import Version
from ..service import Service, UserError
from .common import cached_plot, shown, version_choices


def summary_text(version: Version, metrics: dict, calib: dict) -> str:
    meta = version.metadata
    ece = (f"; calibration error (ECE, {calib['bins']} bins) **{calib['ece']:.2%}** "
           f"(uncalibrated {calib['ece_before']:.2%}, temperature {calib['temperature']:.3f})" if calib else "")
    return (f"**{version.id}**: accuracy **{metrics['accuracy']:.2%}**, macro F1 {metrics['macro']['f1']:.4f} "
            f"on {data.eval_set_words(meta.get('eval_data'), metrics['count'])}{ece}; "
            f"trained {meta.get('train_seconds', '?')} s on {meta.get('train_count', '?')} images.")


def score_rows(metrics: dict) -> list[list]:
    rows = [[c, round(r["precision"], 4), round(r["recall"], 4), round(r["f1"], 4), r["support"]]
            for c, r in metrics["per_class"].items()]
    rows.append(["macro", *(round(metrics["macro"][k], 4) for k in ("precision", "recall", "f1")), metrics["count"]])
    return rows


def comparison_rows(metrics: dict, calib: dict, other: dict, other_calib: dict) -> list[list]:
    pairs = [("accuracy", metrics["accuracy"], other.get("accuracy")),
             ("macro F1", metrics["macro"]["f1"], other.get("macro", {}).get("f1")),
             ("ECE (held-out)", calib.get("ece"), other_calib.get("ece"))]
    pairs += [(f"F1 {c}", metrics["per_class"][c]["f1"], other.get("per_class", {}).get(c, {}).get("f1"))
              for c in CLASSES]
    return [[name, None if a is None else round(a, 4), None if b is None else round(b, 4),
             None if a is None or b is None else round(a - b, 4)] for name, a, b in pairs]


def view(service: Service, version_id: str | None, compare_id: str | None) -> tuple:
    """Everything the tab shows for a version (and a second one side by side): summary, scores,
    comparison and the five plots."""
    version = service.version(version_id)
    metrics = version.metrics
    if not metrics:
        raise UserError(f"Version {version.id} has no metrics.")
    calib = service.calibration_of(version)
    compare, diagrams = [], {version.id: calib}
    if compare_id:
        other = service.version(compare_id)
        diagrams[other.id] = service.calibration_of(other)
        compare = comparison_rows(metrics, calib, other.metrics, diagrams[other.id])
    records = service.uploads.records()  # read the manifest once per view
    distribution = {"training data": version.training_distribution(), **service.uploads.counts(records)}
    drawn = {k: v for k, v in diagrams.items() if v}
    confidence = (
        (lambda: evaluate.plot_confidences(calib["confidence_histogram"], "Calibrated confidence on the held-out images"))
        if calib else (lambda: evaluate.plot_confidences(metrics.get("confidence_histogram", [0] * 20),
                                                         "Confidence of predictions on the evaluation images")))
    return (
        summary_text(version, metrics, calib), score_rows(metrics), compare,
        cached_plot(version.id, "confusion", lambda: evaluate.plot_confusion(metrics, f"Confusion matrix, {version.id}")),
        cached_plot(version.id, "history", lambda: evaluate.plot_history(version.history, f"Training curves, {version.id}")),
        # The manifest is append-only: its length identifies the upload counts drawn.
        cached_plot(version.id, f"distribution-{len(records)}",
                    lambda: evaluate.plot_distribution(distribution, "Class distribution")),
        cached_plot(version.id, "confidence-calibrated" if calib else "confidence", confidence),
        cached_plot(version.id, f"reliability-{'-'.join(drawn)}", lambda: evaluate.plot_reliability(drawn))
        if drawn else None,
    )


def tab(service: Service) -> gr.Dropdown:
    """Lays the tab out and wires it; returns its version picker (a new version refreshes it)."""
    with gr.Tab("Metrics") as metrics_tab:
        with gr.Row():
            version = gr.Dropdown(version_choices(service), value=None, label="Version (empty: current)",
                                  allow_custom_value=True)
            compare = gr.Dropdown(version_choices(service), value=None, label="Compare with (empty: none)",
                                  allow_custom_value=True)
            show = gr.Button("Show", variant="primary")
        summary = gr.Markdown(label="Summary")
        per_class = gr.Dataframe(headers=["class", "precision", "recall", "F1", "support"], label="Scores")
        comparison = gr.Dataframe(headers=["metric", "version", "compared", "difference"], label="Side by side",
                                  elem_id="comparison")
        reliability = gr.Image(type="filepath", label="Reliability on held-out images (calibrated)",
                               elem_id="reliability")
        with gr.Row():
            confusion = gr.Image(type="filepath", label="Confusion matrix")
            history = gr.Image(type="filepath", label="Training curves")
        with gr.Row():
            distribution = gr.Image(type="filepath", label="Class distribution")
            confidence = gr.Image(type="filepath", label="Confidence")

    @shown
    def metrics(version_id, compare_id):
        """A version's held-out metrics (summary, per-class scores, a comparison with another version,
        and plots as PNG files)."""
        return view(service, version_id or None, compare_id or None)

    outputs = [summary, per_class, comparison, confusion, history, distribution, confidence, reliability]
    show.click(metrics, [version, compare], outputs, api_name="metrics")
    metrics_tab.select(metrics, [version, compare], outputs, api_visibility="private")
    return version
