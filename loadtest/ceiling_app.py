"""Gradio's own ceiling on this machine: the app's API endpoints with no work behind them.

Same components, endpoint names and queue settings as app.py, but every function answers at
once without decoding the image or running a network. The load test against it
(`python loadtest/run.py --compare-batching --ceiling`) measures what Gradio and Locust alone
cost per request: no real app can serve more predictions a second on the same machine.
"""
import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import argparse

import gradio as gr

ANSWER = {"airplane": 1.0}


def build() -> gr.Blocks:
    with gr.Blocks() as demo:
        image = gr.Image(type="filepath")
        label, note = gr.Label(), gr.Markdown()
        many = gr.File(file_count="multiple")
        table = gr.Dataframe(headers=["file", "class", "confidence / error"])
        summary = gr.Markdown()
        button = gr.Button()
        button.click(lambda _: (ANSWER, ""), image, [label, note], api_name="predict", concurrency_limit=None,
                     preprocess=False)
        button.click(lambda files: [[str(i), "airplane", 1.0] for i, _ in enumerate(files or [])], many, table,
                     api_name="predict_batch", preprocess=False)
        button.click(lambda a, b: "accuracy: none (ceiling app)", [summary, summary], summary, api_name="metrics")
    return demo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=7860)
    args = parser.parse_args()
    demo = build()
    demo.queue(default_concurrency_limit=4)
    demo.launch(server_name="127.0.0.1", server_port=args.port, state_session_capacity=300)


if __name__ == "__main__":
    main()
