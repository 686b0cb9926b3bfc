"""The model card (README.md with Hub YAML metadata) written into every version."""
from . import CLASSES


def model_card(version_id: str, metadata: dict, metrics: dict) -> str:
    accuracy = metrics.get("accuracy")
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
      name: CIFAR-10 ({metadata.get('eval_data', 'test split')})
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

An airbench-style ConvNet (Keras 3) that sorts 32x32 colour images into {len(CLASSES)} classes:
{', '.join(CLASSES)}.

| | |
|---|---|
| kind | {metadata.get('kind', '?')} |
| parent version | {metadata.get('parent') or 'none (trained from scratch)'} |
| test accuracy | {f'{accuracy:.2%}' if accuracy is not None else 'not measured'} on {metrics.get('count', '?')} images, test-time augmentation level {metrics.get('tta_level', '?')} |
| training time | {metadata.get('train_seconds', '?')} s on {metadata.get('machine', '?')} |
| training images | {metadata.get('train_count', '?')} |

## Per-class scores

| class | precision | recall | F1 |
|---|---|---|---|
{per_class}

## Use

```python
import keras, cifar.model  # registers the custom layers
model = keras.saving.load_model("model.keras")
logits = model(images_uint8_nhwc.astype("float32"))  # raw 0-255 pixels in
```
"""
