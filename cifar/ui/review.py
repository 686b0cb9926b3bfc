"""The Review tab: a person labels the uploads the model is least sure of, by click or key; and
the /review_queue and /label endpoints that do the same from Python."""
import functools

import gradio as gr

from .. import CLASSES, config
from ..learning import review
from ..service import Service, UserError
from ..uploads import NOT_A_CLASS
from .common import shown

# Keyboard shortcuts of the Review tab: digits label, s skips, n says none of these, u undoes.
KEYS_JS = """() => {
  document.addEventListener('keydown', (event) => {
    const panel = document.getElementById('review-panel');
    if (!panel || panel.offsetParent === null || event.target.closest('input, textarea, select')) return;
    const target = /^[0-9]$/.test(event.key) ? 'label-' + event.key
      : {s: 'review-skip', n: 'review-none', u: 'review-undo'}[event.key];
    const button = target && document.getElementById(target);
    if (button) { event.preventDefault(); button.click(); }
  });
}"""


def progress_text(done: dict) -> str:
    total = done["reviewed"] + done["left"]
    if not total:
        return "Nothing to review: upload unlabeled images first (Bulk upload tab)."
    text = f"**{done['reviewed']} of {total}** unlabeled uploads reviewed; {done['left']} left"
    if done["not_a_class"]:
        text += f" ({done['not_a_class']} marked as none of the classes)"
    if done["guess_checked"]:
        text += (f". The model's guess was right on {done['guess_right']} of the {done['guess_checked']} you "
                 f"labeled ({done['guess_right'] / done['guess_checked']:.0%}): these are its hardest cases")
    return text + ". The next retrain trains on every reviewed label."


def api(service: Service) -> None:
    """/review_queue and /label, for gradio_client users."""
    @shown
    def review_queue(k: int = 10, predicted_class: str = "", admin_key: str = "") -> list[dict]:
        """The next k unlabeled uploads, least sure first, each with its id, the model's guess and
        calibrated confidence, and the 32x32 image as a PNG data URL.

        Args:
            k: how many (1-100).
            predicted_class: only uploads the model puts in this class ("" for all).
            admin_key: needed when CIFAR_ADMIN_KEY is set.
        """
        items = service.review_queue(k, predicted_class or None, admin_key)
        return [{**item, "image": review.data_url(service.uploads, item["id"])} for item in items]

    @shown
    def label(upload_id: str, label: str, admin_key: str = "") -> dict:
        """Label one upload: a class name or its digit 0-9, or "none" (not one of the ten classes).
        A second label for the same upload replaces the first; the history is kept.

        Args:
            upload_id: an id from /review_queue.
            label: the class.
            admin_key: needed when CIFAR_ADMIN_KEY is set.
        """
        return service.label(upload_id, label, admin_key)

    gr.api(review_queue, api_name="review_queue")
    gr.api(label, api_name="label")


def tab(service: Service) -> None:
    def show_next(predicted, key, skipped):
        """The least sure upload, large, with the model's guess, and the next ones as a strip."""
        try:
            items = service.review_queue(9, None if predicted in (None, "", "all") else predicted, key, skipped)
        except UserError as exc:
            return None, f"**{exc}**", [], "", None
        progress = progress_text(service.review_progress())
        if not items:
            return None, "Nothing left to review here.", [], progress, None
        first = items[0]
        info = (f"### The model's guess: {first['guess']} ({first['confidence']:.0%})\n"
                f"Margin to the runner-up {first['margin']:.2f}. Upload `{first['id'][:10]}` ({first['file']}).")
        return (review.enlarged(service.uploads, first["id"]), info,
                [(review.enlarged(service.uploads, i["id"]), f"{i['guess']} {i['confidence']:.0%}") for i in items[1:]],
                progress, first["id"])

    def give_label(label, current, predicted, key, skipped, history):
        if not current:
            return (*show_next(predicted, key, skipped), history, "Nothing selected to label.")
        try:
            answer = service.label(current, label, key)
        except UserError as exc:
            return (*show_next(predicted, key, skipped), history, f"**{exc}**")
        return (*show_next(predicted, key, skipped), history + [[current, answer["previous"]]], answer["message"])

    def skip(current, predicted, key, skipped, history):
        skipped = skipped + [current] if current else skipped
        return (*show_next(predicted, key, skipped), skipped, history)

    def undo(predicted, key, skipped, history):
        if not history:
            return (*show_next(predicted, key, skipped), history, "Nothing to undo.")
        upload_id, previous = history[-1]
        answer = service.label(upload_id, previous, key)
        return (*show_next(predicted, key, skipped), history[:-1], "Undone: " + answer["message"])

    with gr.Tab("Review", elem_id="review-panel") as review_tab:
        gr.Markdown("Label the uploads the model is least sure of; the next retrain trains on your labels. "
                    "Keys: **0-9** a class (" + ", ".join(f"{i} {c}" for i, c in enumerate(CLASSES)) +
                    "), **s** skip, **n** none of these, **u** undo.")
        with gr.Row():
            only = gr.Dropdown(["all", *CLASSES], value="all", label="Only where the model guesses")
            key = gr.Textbox("", label="Admin key", type="password", visible=config.admin_key() is not None)
        progress = gr.Markdown(elem_id="review-progress")
        with gr.Row():
            image = gr.Image(label="Least sure first", height=288, width=288, interactive=False,
                             show_label=True, elem_id="review-image")
            with gr.Column():
                info = gr.Markdown()
                with gr.Row():
                    class_buttons = [gr.Button(f"{i} {c}", elem_id=f"label-{i}", min_width=90, size="sm")
                                     for i, c in enumerate(CLASSES)]
                with gr.Row():
                    skip_button = gr.Button("Skip (s)", elem_id="review-skip", size="sm")
                    none_button = gr.Button("None of these (n)", elem_id="review-none", size="sm")
                    undo_button = gr.Button("Undo (u)", elem_id="review-undo", size="sm")
                message = gr.Markdown(elem_id="review-message")
        upcoming = gr.Gallery(label="Next in the queue", columns=8, height=170, allow_preview=False)
        current, skipped, history = gr.State(), gr.State([]), gr.State([])

    view = [image, info, upcoming, progress, current]
    review_tab.select(show_next, [only, key, skipped], view, api_visibility="private")
    only.change(show_next, [only, key, skipped], view, api_visibility="private")
    for label_name, button in zip([*CLASSES, NOT_A_CLASS], [*class_buttons, none_button]):
        button.click(functools.partial(give_label, label_name), [current, only, key, skipped, history],
                     [*view, history, message], api_visibility="private")
    skip_button.click(skip, [current, only, key, skipped, history], [*view, skipped, history],
                      api_visibility="private")
    undo_button.click(undo, [only, key, skipped, history], [*view, history, message], api_visibility="private")
