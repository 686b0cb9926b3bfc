"""The Retrain tab: fine-tune the current model on the uploads, the verdict of the promotion
rule, before-and-after numbers, and the versions panel."""
from typing import NamedTuple

import fastapi
import gradio as gr
import pandas as pd
from pandas.io.formats.style import Styler

from .. import config
from ..jobs import ACTIVE
from ..retrain_rules import PROMOTION_RULE, RETRAIN
from ..service import Service, UserError
from . import versions as versions_panel
from .common import as_percent, shown, versions_update

FOLLOW_S = 2  # how often the tab reads a running job's state


class Tab(NamedTuple):
    threshold: gr.Slider
    epochs: gr.Slider
    admin_key: gr.Textbox
    button: gr.Button
    api_button: gr.Button  # hidden: /retrain, which answers when the retrain ends
    summary: gr.Markdown
    before_after: gr.Dataframe
    follow: gr.Timer       # active while a job runs
    versions: versions_panel.Panel


def result_text(result: dict, threshold: float) -> str:
    """What a finished retrain did, in words: the verdict, the data it used, and where a slow
    CPU made it compress its schedule."""
    text = (f"### {result['message']}\nNew version **{result['version']}** in {result['seconds']} s: "
            f"{result['labeled']} labeled uploads ({result['reviewed']} reviewed by hand), "
            f"{result['pseudo_used']} of {result['pseudo_candidates']} "
            f"unlabeled ones pseudo-labeled at >= {threshold:.1%} confidence"
            + (f", {result['held_back']:,} held back to judge it by." if result.get("held_back") else ".")
            + " " + estimate_note(result["uploads"], result.get("held_back", 0)))
    run, planned = result.get("train_steps") or (0, 0)
    if run < planned:
        text += (f" Trained {run} of {planned} planned steps, the schedule fitted into the "
                 f"{result['train_budget_seconds']:.0f} s this machine allows for a 3-minute retrain.")
    return text


def before_after_rows(result: dict) -> list[list]:
    before, after, estimated = result["before"], result["after"], result["estimated_on_uploads"]
    return [["held-out accuracy", round(before["accuracy"], 4), round(after["accuracy"], 4)],
            ["held-out macro F1", round(before["macro"]["f1"], 4), round(after["macro"]["f1"], 4)],
            ["estimated accuracy on the uploads (no labels)",
             estimated["before"] and round(estimated["before"], 4), estimated["after"] and round(estimated["after"], 4)]]


BEFORE_AFTER_COLUMNS = ["metric", "before", "after"]


def before_after_table(result: dict) -> Styler:
    """The rows as the tab shows them: accuracies in percent, F1 as a fraction (API callers: numbers)."""
    frame = pd.DataFrame(before_after_rows(result), columns=BEFORE_AFTER_COLUMNS, dtype=object)  # None stays None
    numbers = BEFORE_AFTER_COLUMNS[1:]
    accuracies = frame["metric"].str.contains("accuracy")  # by name: the rows' order is before_after_rows' alone
    return as_percent(frame, numbers, list(frame.index[accuracies])).format(
        "{:.4f}", subset=pd.IndexSlice[list(frame.index[~accuracies]), numbers], na_rep="-")


def estimate_note(uploads: int, held_back: int) -> str:
    """What the table's estimate row measured (beside the table: in the row it hid the numbers).
    After a retrain that held uploads back, the new version on those (still optimistic where its own
    guesses were often wrong); else on every upload, where it is optimistic (by up to 25 points on
    CIFAR-10-C's blurs: it learned from them). RESULTS.md."""
    if held_back:
        return (f"The estimated accuracy below is, before, on all {uploads:,} uploads and, after, on the {held_back:,} "
                "held back from training: optimistic where its guesses were often wrong.")
    return (f"The estimated accuracy below is on all {uploads:,} uploads; after, optimistic: the new version learned "
            "from them.")


def job_view(job: dict | None) -> tuple[str, Styler | None]:
    """A retrain job as the tab shows it: its state in words, and the before/after rows once done."""
    if job is None:
        return "No retrain has run yet.", None
    started = (job.get("started") or job["created"])[11:19]
    if job["state"] in ACTIVE:
        return (f"### Retraining ({job['progress']:.0%}): {job['phase']}\nJob `{job['id']}`, started {started} UTC. "
                "Predictions are served meanwhile; this page follows the job (a reload shows it too)."), None
    if job["state"] == "done":
        return result_text(job["result"], job["params"]["threshold"]), before_after_table(job["result"])
    title = "Retrain interrupted" if job["state"] == "interrupted" else "Retrain failed"
    return f"### {title}\n{job['error']}\n\nJob `{job['id']}`, started {started} UTC.", None


def tab(service: Service) -> Tab:
    with gr.Tab("Retrain"):
        gr.Markdown("Fine-tunes the current model on every upload: labeled images keep their labels; unlabeled "
                    "ones are labeled by the current model, re-calibrated to the uploads' own statistics, when "
                    "its calibrated confidence reaches the threshold (and each class's surest half regardless); "
                    "original training images are mixed in so nothing is forgotten. "
                    f"{PROMOTION_RULE} Predictions keep being served meanwhile.")
        with gr.Row():
            threshold = gr.Slider(0.5, 0.999, value=RETRAIN["threshold"], step=0.001,
                                  label="Pseudo-label confidence threshold (calibrated probability of being right)")
            epochs = gr.Slider(1, 10, value=RETRAIN["epochs"], step=1, label="Epochs")
            admin_key = gr.Textbox("", label="Admin key", type="password", visible=config.admin_key() is not None)
        button = gr.Button("Retrain on uploads", variant="primary")
        api_button = gr.Button(visible=False)
        summary = gr.Markdown(label="Result", elem_id="retrain-status")
        before_after = gr.Dataframe(headers=BEFORE_AFTER_COLUMNS, label="Before and after",
                                    elem_id="retrain-before-after")
        follow = gr.Timer(FOLLOW_S, active=False)
        versions = versions_panel.panel(service)
    return Tab(threshold, epochs, admin_key, button, api_button, summary, before_after, follow, versions)


def wire(service: Service, view: Tab, metrics_picker: gr.Dropdown) -> tuple:
    """The retrain button (it starts a job the tab then follows), /retrain, /retrain_start,
    /retrain_status and the versions panel; a finished retrain refreshes the versions and the
    Metrics tab's picker. Returns what the page load runs, and the outputs it fills."""
    followed = [view.summary, view.before_after, view.versions.table, view.versions.picker,
                metrics_picker, view.follow]

    def follow():
        """The latest job; the versions refreshed and the timer stopped once it has ended."""
        job = service.retrain_status()
        text, rows = job_view(job)
        if job is not None and job["state"] in ACTIVE:
            return text, rows, gr.update(), gr.update(), gr.update(), gr.Timer(active=True)
        return text, rows, *versions_update(service), gr.Timer(active=False)

    def opened():
        """What the page shows when it opens: the latest job (followed if it runs) and the versions now."""
        text, rows, *_, timer = follow()
        return text, rows, *versions_update(service), timer

    @shown
    def start(threshold, epochs, key):
        service.start_retrain(threshold, int(epochs), key)
        return follow()

    @shown
    def retrain(threshold, epochs, key, progress=gr.Progress()):  # noqa: B008 (Gradio's way to ask for progress)
        """Retrain on every upload and answer with the result when it ends (minutes). The retrain is a
        job: if this call's connection drops, it still finishes; /retrain_status shows it."""
        job = service.start_retrain(threshold, int(epochs), key)
        job = service.wait_for_retrain(job["id"], report=lambda f, m: progress(f, desc=m))
        if job["state"] != "done":
            raise gr.Error(job["error"], print_exception=False)
        return (result_text(job["result"], threshold), before_after_table(job["result"]), *versions_update(service))

    @shown
    def retrain_start(threshold: float = RETRAIN["threshold"], epochs: int = RETRAIN["epochs"],
                      admin_key: str = "") -> dict:
        """Start a retrain on every upload and answer at once with its job: {id, state, ...}. Follow
        it with /retrain_status.

        Args:
            threshold: pseudo-label confidence threshold (calibrated probability of being right).
            epochs: epochs of fine-tuning (1-10).
            admin_key: needed when CIFAR_ADMIN_KEY is set.
        """
        return service.start_retrain(threshold, int(epochs), admin_key)

    @shown
    def retrain_status(job_id: str = "") -> dict | None:
        """A retrain job: {id, state (queued, running, done, failed, interrupted), phase, progress,
        result (with version and promoted) or error}. None before the first retrain.

        Args:
            job_id: a job id from /retrain_start ("" for the latest).
        """
        return service.retrain_status(job_id or None)

    inputs = [view.threshold, view.epochs, view.admin_key]
    view.button.click(start, inputs, followed, api_visibility="private")
    view.follow.tick(follow, None, followed, api_visibility="private")
    # Named as their endpoints: MCP clients see the functions' names as the tools' names.
    view.api_button.click(retrain, inputs, followed[:-1], api_name="retrain")
    gr.api(retrain_start, api_name="retrain_start")
    gr.api(retrain_status, api_name="retrain_status")
    versions_panel.wire(service, view.versions, view.admin_key, metrics_picker)
    return opened, followed


def status_route(service: Service):
    """GET /api/retrain_status?job_id=: the same answer as /retrain_status, as plain JSON from a
    plain HTTP route, outside Gradio's queue: it stays quick while the queue is flooded (a load
    test, a busy Space), and curl or any HTTP client reads it without Gradio's protocol."""
    def retrain_status(job_id: str = ""):
        try:
            return service.retrain_status(job_id or None)
        except UserError as exc:
            raise fastapi.HTTPException(status_code=404, detail=str(exc)) from None
    return retrain_status
