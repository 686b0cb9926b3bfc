"""The Bulk upload tab: images or a zip into the upload store, what the model thinks of them, and
the store's class mix beside the training data's."""
import gradio as gr
import numpy as np

from .. import CLASSES, evaluate
from ..service import Service
from ..uploads import UploadReport
from .common import cached_plot, shown


def summary(service: Service, report: UploadReport) -> str:
    """A sentence for people, with the estimated accuracy on these images when there is one."""
    records = service.uploads.records()
    reviewed = sum(r["source"] == "review" for r in records)
    text = (f"**{report.accepted} accepted** ({report.labeled} labeled, {report.accepted - report.labeled} unlabeled), "
            f"{report.duplicates} duplicates skipped, **{len(report.rejected)} rejected**. "
            f"The store holds {len(records)} images" + (f", {reviewed} of them labeled in the Review tab."
                                                         if reviewed else "."))
    where = service.sync.where() if report.accepted else None
    if where == "pending":
        text += f" On the Hub ({service.sync.dataset_repo}): pending, synced within a minute."
    elif where == "hub":
        text += f" On the Hub ({service.sync.dataset_repo}): saved."
    elif where == "local only":
        text += " Kept on this disk (no Hub repository configured)."
    estimate = service.upload_estimate(report)
    if estimate:
        text += (f"\n\nEstimated accuracy of the current model on these {estimate['images']:,} images: "
                 f"**{estimate['estimated']:.0%}** ({estimate['reference']:.1%} on the held-out test images)")
        text += (": they look unlike what it was trained on; **retraining on them is recommended** (Retrain tab)."
                 if estimate["retrain_recommended"] else ": the model knows images like these; retraining is optional.")
    return text


def class_mix_plot(service: Service, report: UploadReport | None = None) -> str | None:
    """Class mix of the store (and of this upload, as the model sees it) beside the training
    mix, as shares; None while the store is empty."""
    records = service.uploads.records()
    if not records:
        return None
    series = {"training data": service.registry.current().training_distribution()}
    if report is not None and report.probabilities is not None and len(report.probabilities):
        predicted = np.bincount(report.probabilities.argmax(axis=1), minlength=len(CLASSES))
        series["this upload, predicted"] = {c: int(predicted[i]) for i, c in enumerate(CLASSES)}
        key = f"{report.batch}-{len(records)}"
    else:
        key = f"store-{len(records)}"
    series.update({f"all uploads, {name}": per_class for name, per_class in service.uploads.counts(records).items()
                   if sum(per_class.values())})
    return cached_plot("uploads", key, lambda: evaluate.plot_distribution(
        series, "Uploads by class, as shares of each series", shares=True))


def tab(service: Service) -> gr.Image:
    """Lays the tab out and wires its upload; returns the class-mix plot (the page load fills it)."""
    @shown
    def upload(files):
        """Store images (files, or zips of them; a class-named folder or name prefix labels one): a
        summary with the estimated accuracy on them, the rejected files with reasons, a class-mix plot."""
        report = service.upload(files)
        return summary(service, report), [[r.file, r.reason] for r in report.rejected], class_mix_plot(service, report)

    with gr.Tab("Bulk upload"):
        gr.Markdown("Up to 1,000 images at a time, as files or one zip. Labels are optional: a class-named "
                    "folder in the zip (`dog/x.png`) or a class-name prefix (`dog_12.jpg`) labels an image. "
                    "The app estimates how accurate it is on the unlabeled ones and says whether a retrain "
                    "is worth it.")
        files = gr.File(file_count="multiple", file_types=["image", ".zip"], label="Images or a zip")
        button = gr.Button("Upload", variant="primary")
        text = gr.Markdown(label="Summary")
        rejected = gr.Dataframe(headers=["file", "reason"], label="Rejected files")
        plot = gr.Image(type="filepath", label="Uploads by class", show_label=False, visible=False, interactive=False)

    button.click(upload, files, [text, rejected, plot], api_name="upload").then(
        lambda path: gr.update(visible=path is not None), plot, plot, api_visibility="private")
    return plot


def stored_plot(service: Service):
    """The store's class mix when the page opens; hidden while nothing is uploaded (no empty frame)."""
    path = class_mix_plot(service)
    return gr.update(value=path, visible=path is not None)
