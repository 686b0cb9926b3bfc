"""CIFAR-10 classifier Space: the Gradio UI. Only wiring: every action is a cifar.service call."""
import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import argparse
import functools
import logging
from pathlib import Path

import gradio as gr
import pandas as pd

from cifar import CLASSES, config, gradio_sessions, train
from cifar.learning.retrain import PROMOTION_RULE
from cifar.service import Service, UserError
from cifar.uploads import NOT_A_CLASS

ASSETS = Path(__file__).parent / "assets"
EXAMPLES = [[str(ASSETS / "examples" / f"{c}.png")] for c in CLASSES]
VERSION_HEADERS = ["version", "current", "kind", "parent", "accuracy", "evaluated on", "train s"]
LOCUST_HELP = """### Load test
```bash
python loadtest/run.py --users 32 --spawn-rate 8 --duration 60s     # headless; starts the app if needed
locust -f loadtest/locustfile.py --host http://127.0.0.1:7860     # web UI at http://localhost:8089
```"""


# Keyboard shortcuts of the Review tab: digits label, s skips, n says none of these, u undoes.
REVIEW_KEYS = """() => {
  document.addEventListener('keydown', (event) => {
    const panel = document.getElementById('review-panel');
    if (!panel || panel.offsetParent === null || event.target.closest('input, textarea, select')) return;
    const target = /^[0-9]$/.test(event.key) ? 'label-' + event.key
      : {s: 'review-skip', n: 'review-none', u: 'review-undo'}[event.key];
    const button = target && document.getElementById(target);
    if (button) { event.preventDefault(); button.click(); }
  });
}"""


def shown(fn):
    """Turn the errors a user can cause into a readable message (no stack trace)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            raise gr.Error(str(exc), print_exception=False) from None
    return wrapper


def build(service: Service) -> gr.Blocks:
    def version_choices():
        return [v.id for v in reversed(service.registry.list())]

    def versions_update():
        return service.versions_table(), gr.update(choices=version_choices()), gr.update(choices=version_choices())

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
        return confidences, service.unsure_note(confidences), confidences

    def bars(confidences):
        confidences = confidences or {}
        return pd.DataFrame({"class": list(CLASSES), "confidence": [confidences.get(c, 0.0) for c in CLASSES]})

    @shown
    def upload(files):
        report = service.upload(files)
        text, rejected = service.upload_summary(report)
        return text, rejected, service.upload_plot(report)

    def stored_uploads_plot():
        path = service.upload_plot()  # None while nothing is uploaded: no empty frame
        return gr.update(value=path, visible=path is not None)

    def monitoring_panel():
        text, rows, field = service.monitoring_view()
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
        return text, rows, timeline, timeline, accuracy.dropna(), confidence, mix

    @shown
    def retrain(threshold, epochs, key, progress=gr.Progress()):
        result = service.retrain(threshold, int(epochs), key, report=lambda f, m: progress(f, desc=m))
        before, after, estimated = result["before"], result["after"], result["estimated_on_uploads"]
        text = (f"### {result['message']}\nNew version **{result['version']}** in {result['seconds']} s: "
                f"{result['labeled']} labeled uploads ({result['reviewed']} reviewed by hand), "
                f"{result['pseudo_used']} of {result['pseudo_candidates']} "
                f"unlabeled ones pseudo-labeled at >= {threshold:.1%} confidence.")
        run, planned = result.get("train_steps") or (0, 0)
        if run < planned:  # a slow CPU: the schedule was compressed into the time budget
            text += (f" Trained {run} of {planned} planned steps, the schedule fitted into the "
                     f"{result['train_budget_seconds']:.0f} s this machine allows for a 3-minute retrain.")
        table = [["held-out accuracy", round(before["accuracy"], 4), round(after["accuracy"], 4)],
                 ["held-out macro F1", round(before["macro"]["f1"], 4), round(after["macro"]["f1"], 4)],
                 [f"estimated accuracy on the {result['uploads']:,} uploads (no labels)",
                  estimated["before"] and round(estimated["before"], 4), estimated["after"] and round(estimated["after"], 4)]]
        return (text, table, *versions_update())

    @shown
    def rollback(version_id, key):
        return (service.rollback(version_id or None, key), *versions_update())

    @shown
    def push(version_id, key):
        return service.push(version_id or None, key)

    @shown
    def metrics(version_id, compare_id):
        view = service.metrics_view(version_id or None, compare_id or None)
        return (view["summary"], view["rows"], view["compare"], view["confusion"], view["history"],
                view["distribution"], view["confidence"], view["reliability"])

    @shown
    def review_queue_api(k: int = 10, predicted_class: str = "", admin_key: str = "") -> list[dict]:
        """The next k unlabeled uploads, least sure first, each with its id, the model's guess and
        calibrated confidence, and the 32x32 image as a PNG data URL.

        Args:
            k: how many (1-100).
            predicted_class: only uploads the model puts in this class ("" for all).
            admin_key: needed when CIFAR_ADMIN_KEY is set.
        """
        items = service.review_queue(k, predicted_class or None, admin_key)
        return [{**item, "image": service.review_image_data_url(item["id"])} for item in items]

    @shown
    def label_api(upload_id: str, label: str, admin_key: str = "") -> dict:
        """Label one upload: a class name or its digit 0-9, or "none" (not one of the ten classes).
        A second label for the same upload replaces the first; the history is kept.

        Args:
            upload_id: an id from /review_queue.
            label: the class.
            admin_key: needed when CIFAR_ADMIN_KEY is set.
        """
        return service.label(upload_id, label, admin_key)

    def review_next(predicted, key, skipped):
        """The least sure upload, large, with the model's guess, and the next ones as a strip."""
        try:
            items = service.review_queue(9, None if predicted in (None, "", "all") else predicted, key, skipped)
        except UserError as exc:
            return None, f"**{exc}**", [], "", None
        progress = service.review_progress()
        if not items:
            return None, "Nothing left to review here.", [], progress, None
        first = items[0]
        info = (f"### The model's guess: {first['guess']} ({first['confidence']:.0%})\n"
                f"Margin to the runner-up {first['margin']:.2f}. Upload `{first['id'][:10]}` ({first['file']}).")
        return (service.review_image(first["id"]), info,
                [(service.review_image(i["id"]), f"{i['guess']} {i['confidence']:.0%}") for i in items[1:]],
                progress, first["id"])

    def review_label(label, current, predicted, key, skipped, history):
        if not current:
            return (*review_next(predicted, key, skipped), history, "Nothing selected to label.")
        try:
            answer = service.label(current, label, key)
        except UserError as exc:
            return (*review_next(predicted, key, skipped), history, f"**{exc}**")
        return (*review_next(predicted, key, skipped), history + [[current, answer["previous"]]], answer["message"])

    def review_skip(current, predicted, key, skipped, history):
        skipped = skipped + [current] if current else skipped
        return (*review_next(predicted, key, skipped), skipped, history)

    def review_undo(predicted, key, skipped, history):
        if not history:
            return (*review_next(predicted, key, skipped), history, "Nothing to undo.")
        upload_id, previous = history[-1]
        answer = service.label(upload_id, previous, key)
        return (*review_next(predicted, key, skipped), history[:-1], "Undone: " + answer["message"])

    with gr.Blocks(title="CIFAR-10 classifier") as demo:
        gr.Markdown("# CIFAR-10 classifier\nClassifies photos into 10 classes: " + ", ".join(CLASSES) +
                    ". Upload images to retrain it; every model version is kept. Confidences are calibrated: "
                    "of the answers given with 90% confidence, about 90% are right.")
        with gr.Tab("Predict"):
            with gr.Row():
                with gr.Column():
                    image = gr.Image(type="filepath", sources=["upload", "webcam", "clipboard"], label="Image")
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
        with gr.Tab("Bulk upload"):
            gr.Markdown("Up to 1,000 images at a time, as files or one zip. Labels are optional: a class-named "
                        "folder in the zip (`dog/x.png`) or a class-name prefix (`dog_12.jpg`) labels an image. "
                        "The app estimates how accurate it is on the unlabeled ones and says whether a retrain "
                        "is worth it.")
            upload_files = gr.File(file_count="multiple", file_types=["image", ".zip"], label="Images or a zip")
            upload_button = gr.Button("Upload", variant="primary")
            upload_summary = gr.Markdown(label="Summary")
            rejected = gr.Dataframe(headers=["file", "reason"], label="Rejected files")
            upload_plot = gr.Image(type="filepath", label="Uploads by class", show_label=False, visible=False,
                                   interactive=False)
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
                admin_key = gr.Textbox("", label="Admin key", type="password",
                                       visible=config.admin_key() is not None)
            retrain_button = gr.Button("Retrain on uploads", variant="primary")
            retrain_summary = gr.Markdown(label="Result")
            before_after = gr.Dataframe(headers=["metric", "before", "after"], label="Before and after")
            versions = gr.Dataframe(service.versions_table(), headers=VERSION_HEADERS, label="Versions")
            with gr.Row():
                rollback_to = gr.Dropdown(version_choices(), label="Version", allow_custom_value=True)
                rollback_button = gr.Button("Roll back / make current")
                push_button = gr.Button("Push to the Hub")
                refresh_versions = gr.Button("Refresh list")
            version_message = gr.Markdown(label="Message")
        with gr.Tab("Review", elem_id="review-panel") as review_tab:
            gr.Markdown("Label the uploads the model is least sure of; the next retrain trains on your labels. "
                        "Keys: **0-9** a class (" + ", ".join(f"{i} {c}" for i, c in enumerate(CLASSES)) +
                        "), **s** skip, **n** none of these, **u** undo.")
            with gr.Row():
                review_filter = gr.Dropdown(["all", *CLASSES], value="all", label="Only where the model guesses")
                review_key = gr.Textbox("", label="Admin key", type="password", visible=config.admin_key() is not None)
            review_progress = gr.Markdown(elem_id="review-progress")
            with gr.Row():
                review_image = gr.Image(label="Least sure first", height=288, width=288, interactive=False,
                                        show_label=True, elem_id="review-image")
                with gr.Column():
                    review_info = gr.Markdown()
                    with gr.Row():
                        class_buttons = [gr.Button(f"{i} {c}", elem_id=f"label-{i}", min_width=90, size="sm")
                                         for i, c in enumerate(CLASSES)]
                    with gr.Row():
                        skip_button = gr.Button("Skip (s)", elem_id="review-skip", size="sm")
                        none_button = gr.Button("None of these (n)", elem_id="review-none", size="sm")
                        undo_button = gr.Button("Undo (u)", elem_id="review-undo", size="sm")
                    review_message = gr.Markdown(elem_id="review-message")
            review_upcoming = gr.Gallery(label="Next in the queue", columns=8, height=170, allow_preview=False)
            review_current, review_skipped, review_history = gr.State(), gr.State([]), gr.State([])
        with gr.Tab("Metrics") as metrics_tab:
            with gr.Row():
                metrics_version = gr.Dropdown(version_choices(), value=None, label="Version (empty: current)",
                                              allow_custom_value=True)
                compare_version = gr.Dropdown(version_choices(), value=None, label="Compare with (empty: none)",
                                              allow_custom_value=True)
                show_metrics = gr.Button("Show", variant="primary")
            metrics_summary = gr.Markdown(label="Summary")
            per_class = gr.Dataframe(headers=["class", "precision", "recall", "F1", "support"], label="Scores")
            comparison = gr.Dataframe(headers=["metric", "version", "compared", "difference"], label="Side by side",
                                      elem_id="comparison")
            reliability_plot = gr.Image(type="filepath", label="Reliability on held-out images (calibrated)",
                                        elem_id="reliability")
            with gr.Row():
                confusion_plot = gr.Image(type="filepath", label="Confusion matrix")
                history_plot = gr.Image(type="filepath", label="Training curves")
            with gr.Row():
                distribution_plot = gr.Image(type="filepath", label="Class distribution")
                confidence_plot = gr.Image(type="filepath", label="Confidence")
        with gr.Tab("Monitoring"):
            status = gr.Markdown(label="Status")
            with gr.Row():
                rate_plot = gr.LinePlot(x="time", y="predictions_per_minute", label="Predictions per minute",
                                         y_title="predictions / min")
                latency_plot = gr.LinePlot(x="time", y="latency_p95_ms", label="Latency p95", y_title="ms")
                accuracy_plot = gr.LinePlot(x="time", y="estimated_accuracy", color="series", y_lim=[0, 1],
                                            label="Estimated accuracy (no labels) against the held-out reference",
                                            y_title="accuracy")
            with gr.Row():
                confidence_hist = gr.LinePlot(x="confidence", y="share", color="series", x_lim=[0, 1],
                                              label="Confidence of served predictions against held-out images")
                class_mix = gr.LinePlot(x="class", y="share", color="series", sort=list(CLASSES),
                                        label="Predicted class mix against the training prior")
            stats = gr.Dataframe(headers=["endpoint", "requests", "errors", "p50 ms", "p95 ms", "p99 ms"],
                                 label="Since start")
            gr.Markdown(LOCUST_HELP)
            monitoring_outputs = [status, stats, rate_plot, latency_plot, accuracy_plot, confidence_hist, class_mix]
            gr.Timer(5).tick(monitoring_panel, None, monitoring_outputs, api_visibility="private")

        # --- events: each named API endpoint is callable with gradio_client -----------------
        classify.click(predict, image, [label, note, all_confidences], api_name="predict", concurrency_limit=None,
                       preprocess=False).then(
            bars, all_confidences, chart, api_visibility="private")
        image.upload(predict, image, [label, note, all_confidences], api_visibility="private", preprocess=False).then(
            bars, all_confidences, chart, api_visibility="private")
        classify_many.click(shown(service.predict_files), many, [table, csv_file], api_name="predict_batch")
        upload_button.click(upload, upload_files, [upload_summary, rejected, upload_plot], api_name="upload").then(
            lambda path: gr.update(visible=path is not None), upload_plot, upload_plot, api_visibility="private")
        retrain_button.click(retrain, [threshold, epochs, admin_key],
                             [retrain_summary, before_after, versions, rollback_to, metrics_version],
                             api_name="retrain")
        rollback_button.click(rollback, [rollback_to, admin_key], [version_message, versions, rollback_to,
                                                                   metrics_version], api_name="rollback")
        push_button.click(push, [rollback_to, admin_key], version_message, api_name="push")
        refresh_versions.click(service.versions_table, None, versions, api_name="versions")
        review_view = [review_image, review_info, review_upcoming, review_progress, review_current]
        review_tab.select(review_next, [review_filter, review_key, review_skipped], review_view, api_visibility="private")
        review_filter.change(review_next, [review_filter, review_key, review_skipped], review_view,
                             api_visibility="private")
        for label_name, button in zip([*CLASSES, NOT_A_CLASS], [*class_buttons, none_button]):
            button.click(functools.partial(review_label, label_name),
                         [review_current, review_filter, review_key, review_skipped, review_history],
                         [*review_view, review_history, review_message], api_visibility="private")
        skip_button.click(review_skip, [review_current, review_filter, review_key, review_skipped, review_history],
                          [*review_view, review_skipped, review_history], api_visibility="private")
        undo_button.click(review_undo, [review_filter, review_key, review_skipped, review_history],
                          [*review_view, review_history, review_message], api_visibility="private")
        gr.api(review_queue_api, api_name="review_queue")
        gr.api(label_api, api_name="label")
        metrics_outputs = [metrics_summary, per_class, comparison, confusion_plot, history_plot,
                           distribution_plot, confidence_plot, reliability_plot]
        show_metrics.click(metrics, [metrics_version, compare_version], metrics_outputs, api_name="metrics")
        metrics_tab.select(metrics, [metrics_version, compare_version], metrics_outputs, api_visibility="private")
        gr.api(service.monitoring, api_name="monitoring")
        demo.load(monitoring_panel, None, monitoring_outputs, api_visibility="private")
        demo.load(versions_update, None, [versions, rollback_to, metrics_version], api_visibility="private")
        demo.load(stored_uploads_plot, None, upload_plot, api_visibility="private")
    return demo


def main() -> None:
    parser = argparse.ArgumentParser(description="CIFAR-10 classifier app")
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
    parser.add_argument("--share", action="store_true", default=os.environ.get("GRADIO_SHARE", "").lower() == "true")
    parser.add_argument("--mcp", action="store_true", default=os.environ.get("GRADIO_MCP_SERVER", "").lower() == "true",
                        help="also serve prediction as an MCP tool")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    service = Service()
    demo = build(service)
    demo.queue(default_concurrency_limit=4)
    gradio_sessions.install()  # a new session no longer builds every component's config up front
    # Every API call is a new Gradio session whose state is kept up to state_session_capacity;
    # 10,000 of them grew the app by ~900 MB in a 10-minute soak. The app keeps no per-session
    # state, so a few hundred recent sessions are plenty.
    launch = dict(server_name=args.host, server_port=args.port, show_error=True, max_file_size="100mb",
                  state_session_capacity=300,
                  allowed_paths=[str(ASSETS), str(config.plots_dir())],
                  blocked_paths=[str(config.uploads_dir()), str(config.registry_dir())], mcp_server=args.mcp)
    demo.launch(share=args.share, prevent_thread_lock=True, js=REVIEW_KEYS, **launch)
    if args.share:
        # Offline or blocked, Gradio cannot open the tunnel; say so plainly and keep serving locally.
        print(f"Public link: {demo.share_url}" if demo.share_url else
              f"No public share link could be created (offline?); serving locally at {demo.local_url}", flush=True)
    demo.block_thread()


if __name__ == "__main__":
    main()
