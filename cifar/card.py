"""The model card (README.md with Hub YAML metadata) written into every version."""
from . import CLASSES


def _dataset(metadata: dict) -> str:
    """What the version was evaluated on, in words a Hub reader can use (not a local path)."""
    text = str(metadata.get("eval_data", ""))
    if "holdout" in text:
        return "CIFAR-10 test split, 2,000 held-out images"
    return "CIFAR-10 test split (JPEG copy, 10,000 images)"


def model_card(version_id: str, metadata: dict, metrics: dict, calibration: dict | None = None,
               repo: str = "OWNER/REPO", current_since: str | None = None) -> str:
    """The model card; `current_since` (a time) says this is the version the app serves now."""
    current = (f"\n**This is the current version**: the one the app serves since {current_since} "
               "(`current.json` records it; every version is also a tag).\n" if current_since else "")
    accuracy = metrics.get("accuracy")
    temperature = (calibration or {}).get("temperature")
    results = ""
    if accuracy is not None:
        results = f"""model-index:
- name: {version_id}
  results:
  - task:
      type: image-classification
      name: Image classification
    dataset:
      type: cifar10
      name: {_dataset(metadata)}
      split: test
    metrics:
    - type: accuracy
      value: {accuracy:.4f}
"""
    per_class = "\n".join(
        f"| {name} | {row['precision']:.3f} | {row['recall']:.3f} | {row['f1']:.3f} |"
        for name, row in metrics.get("per_class", {}).items())
    return f"""---
library_name: keras
license: mit
tags:
- image-classification
- cifar10
- keras
datasets:
- cifar10
pipeline_tag: image-classification
{results}---

# CIFAR-10 classifier, version `{version_id}`
{current}
An airbench-style ConvNet (Keras 3) that sorts 32x32 colour images into {len(CLASSES)} classes:
{', '.join(CLASSES)}.

| | |
|---|---|
| kind | {metadata.get('kind', '?')} |
| parent version | {metadata.get('parent') or 'none (trained from scratch)'} |
| test accuracy | {f'{accuracy:.2%}' if accuracy is not None else 'not measured'} on {metrics.get('count', '?')} images, test-time augmentation level {metrics.get('tta_level', '?')} |
| training time | {metadata.get('train_seconds', '?')} s on {metadata.get('machine', '?')} |
| training images | {metadata.get('train_count', '?')} |
| calibration | {f"temperature {temperature:.4f}: divide the logits by it before the softmax (expected calibration error {calibration['ece_before']:.1%} -> {calibration['ece']:.1%} on {calibration['count']:,} held-out images)" if temperature else 'none'} |

## Per-class scores

| class | precision | recall | F1 |
|---|---|---|---|
{per_class}

## Use

Keras 3 alone loads it (no code from the app is needed):

```python
import keras
import numpy as np

model = keras.saving.load_model("hf://{repo}")   # the newest version; or the model.keras file
pixels = np.asarray(images, dtype="float32")        # (N, 32, 32, 3) RGB, raw 0-255 values
logits = model.predict(pixels)                      # (N, 10) logits
probabilities = keras.ops.softmax(logits / {temperature or 1.0:.4f})  # calibrated probabilities
```

- **Inputs**: RGB images of 32x32 pixels, values 0-255 (the model standardises them itself).
  Resize larger pictures to 32x32 first.
- **Outputs**: 10 logits in the class order {', '.join(f'{i} {c}' for i, c in enumerate(CLASSES))}.
- **Calibration**: dividing by the temperature ({temperature or 1.0:.4f}) makes the probabilities
  honest; the plain softmax is overly modest (label smoothing shrinks the logits).
- The app averages the logits of 6 views (the image and its mirror, weight 1/4 each; both shifted
  one pixel up-left and down-right, and their mirrors, 1/8 each).
"""
