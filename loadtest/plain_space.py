"""The baseline: how a plain Gradio Space would serve the same model.

One `model.predict` call per request on the shipped `.keras` file (no micro-batching, no
test-time augmentation, no calibration), the image resized with Pillow, Gradio's default queue:
what most CIFAR-10 demo Spaces do. It answers the same endpoints the locustfile calls, so
`python loadtest/run.py --compare` puts it under the same load as the app.
"""
import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import argparse
import sys
from pathlib import Path

import gradio as gr
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import keras

from cifar import CLASSES, config
from cifar.registry import Registry


def build(model) -> gr.Blocks:
    def pixels(path):
        return np.asarray(Image.open(path).convert("RGB").resize((32, 32)), dtype=np.float32)[None]

    def classify(path):
        logits = model.predict(pixels(path), verbose=0)[0]
        p = np.exp(logits - logits.max())
        p /= p.sum()
        return {c: float(p[i]) for i, c in enumerate(CLASSES)}

    def classify_many(paths):
        return [[Path(p).name, max((d := classify(p)), key=d.get), 1.0] for p in paths or []]

    with gr.Blocks() as demo:
        image, many = gr.Image(type="filepath"), gr.File(file_count="multiple", type="filepath")
        label, table, text = gr.Label(num_top_classes=3), gr.Dataframe(), gr.Markdown()
        button = gr.Button()
        button.click(classify, image, label, api_name="predict")
        button.click(classify_many, many, table, api_name="predict_batch")
        button.click(lambda a, b: "accuracy: not measured (plain Space)", [text, text], text, api_name="metrics")
    return demo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=7860)
    args = parser.parse_args()
    from cifar import model as _registers_the_old_custom_layer  # noqa: F401  (older versions need it)

    model = keras.saving.load_model(Registry(config.shipped_models_dir()).current().model_path, compile=False)
    demo = build(model)
    demo.queue()  # Gradio's defaults: one request at a time per event
    demo.launch(server_name="127.0.0.1", server_port=args.port)


if __name__ == "__main__":
    main()
