"""Metrics (scikit-learn) and plots (matplotlib) of a model version."""
import functools
import io
import time
from pathlib import Path

import numpy as np

from . import CLASSES

ECE_BINS = 15  # Guo et al.'s choice; the Metrics tab, the calibration and the benchmark use the same


def compute_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict:
    """Accuracy, macro and per-class precision/recall/F1 and the confusion matrix."""
    # Imported here: scikit-learn takes 0.75 s of CPU to import, a third of the app's start-up
    # beyond Gradio, and a serving app needs it only once a version is judged.
    from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

    labels = list(range(len(CLASSES)))
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0)
    macro = precision_recall_fscore_support(y_true, y_pred, labels=labels, average="macro", zero_division=0)
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro": {"precision": float(macro[0]), "recall": float(macro[1]), "f1": float(macro[2])},
        "per_class": {name: {"precision": float(precision[i]), "recall": float(recall[i]),
                             "f1": float(f1[i]), "support": int(support[i])}
                      for i, name in enumerate(CLASSES)},
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
        "count": len(y_true),
    }


def evaluate(predictor, x: np.ndarray, y: np.ndarray) -> dict:
    """Metrics of `predictor` on (x, y), plus the confidences it gave (for the confidence plot)."""
    started = time.time()
    probabilities = predictor.predict_arrays(x)
    return metrics_from_probabilities(probabilities, y, predictor.tta_level, time.time() - started)


def metrics_from_probabilities(probabilities: np.ndarray, y: np.ndarray, tta_level: int, seconds: float) -> dict:
    metrics = compute_metrics(y, probabilities.argmax(axis=1))
    metrics["seconds"] = round(seconds, 2)
    metrics["tta_level"] = tta_level
    metrics["confidence_histogram"] = np.histogram(probabilities.max(axis=1), bins=20, range=(0, 1))[0].tolist()
    metrics["ece"] = reliability(probabilities, y)["ece"]
    return metrics


def reliability(probabilities: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> dict:
    """Per confidence bin: images, mean confidence, accuracy; and the expected calibration error
    (the bins' |accuracy - confidence| weighted by their share of the images)."""
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == labels
    which = np.minimum((confidence * bins).astype(int), bins - 1)
    counts = np.bincount(which, minlength=bins)
    safe = np.maximum(counts, 1)
    mean_conf = np.bincount(which, weights=confidence, minlength=bins) / safe
    accuracy = np.bincount(which, weights=correct, minlength=bins) / safe
    ece = float((counts * np.abs(accuracy - mean_conf)).sum() / max(1, len(labels)))
    return {"ece": ece, "counts": counts.tolist(), "confidence": mean_conf.round(5).tolist(),
            "accuracy": accuracy.round(5).tolist(), "mean_confidence": float(confidence.mean()),
            "top1": float(correct.mean())}


def ece(probabilities: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    return reliability(probabilities, labels, bins)["ece"]


def format_table(metrics: dict) -> str:
    lines = [f"accuracy {metrics['accuracy']:.4f} on {metrics['count']} images", "",
             f"{'class':<12}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>9}"]
    for name, row in metrics["per_class"].items():
        lines.append(f"{name:<12}{row['precision']:>10.4f}{row['recall']:>10.4f}{row['f1']:>10.4f}{row['support']:>9}")
    macro = metrics["macro"]
    lines.append(f"{'macro':<12}{macro['precision']:>10.4f}{macro['recall']:>10.4f}{macro['f1']:>10.4f}")
    return "\n".join(lines)


# --- plots: each returns a matplotlib Figure; save_png writes one --------------------------

@functools.cache
def _pyplot():
    """matplotlib's pyplot, headless (no display on servers). Imported at the first plot, not with
    this module: 0.2 s of every app's start, and an app draws nothing until a page asks."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_confusion(metrics: dict, title: str = "Confusion matrix"):
    matrix = np.asarray(metrics["confusion_matrix"])
    fig, ax = _pyplot().subplots(figsize=(6.4, 5.6))
    image = ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(CLASSES)), CLASSES, rotation=45, ha="right")
    ax.set_yticks(range(len(CLASSES)), CLASSES)
    ax.set_xlabel("predicted"), ax.set_ylabel("true"), ax.set_title(title)
    threshold = matrix.max() / 2 if matrix.size else 0
    for (i, j), value in np.ndenumerate(matrix):
        ax.text(j, i, str(value), ha="center", va="center", fontsize=7,
                color="white" if value > threshold else "black")
    fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    return fig


def plot_per_class(metrics: dict, title: str = "Per-class scores"):
    fig, ax = _pyplot().subplots(figsize=(7.5, 3.6))
    positions = np.arange(len(CLASSES))
    for offset, key in zip((-0.27, 0, 0.27), ("precision", "recall", "f1")):
        ax.bar(positions + offset, [metrics["per_class"][c][key] for c in CLASSES], 0.27, label=key)
    ax.set_xticks(positions, CLASSES, rotation=30, ha="right")
    low = min(min(metrics["per_class"][c][k] for c in CLASSES) for k in ("precision", "recall", "f1"))
    ax.set_ylim(max(0.0, low - 0.05), 1.0), ax.set_title(title), ax.legend(ncol=3, fontsize=8)
    fig.tight_layout()
    return fig


def plot_history(history: dict, title: str = "Training curves"):
    fig, (loss_ax, acc_ax) = _pyplot().subplots(1, 2, figsize=(8, 3.2))
    epochs = np.arange(1, len(history.get("loss", [])) + 1)
    for key, ax in (("loss", loss_ax), ("accuracy", acc_ax)):
        if history.get(key):
            ax.plot(epochs, history[key], marker=".", label="train")
        if history.get(f"val_{key}"):
            ax.plot(epochs, history[f"val_{key}"], marker=".", label="held-out")
        ax.set_xlabel("epoch"), ax.set_title(key), ax.grid(alpha=0.3), ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_distribution(counts: dict[str, dict[str, int]], title: str = "Class distribution", shares: bool = False):
    """`counts` maps a series name (e.g. "training", "uploads") to {class: count}; `shares`
    draws each series as fractions of its total, so sets of different sizes compare."""
    fig, ax = _pyplot().subplots(figsize=(7.5, 3.4))
    positions = np.arange(len(CLASSES))
    width = 0.8 / max(1, len(counts))
    for i, (series, per_class) in enumerate(counts.items()):
        values = np.array([per_class.get(c, 0) for c in CLASSES], float)
        if shares:
            values = values / max(1.0, values.sum())
        ax.bar(positions + (i - (len(counts) - 1) / 2) * width, values, width, label=series)
    ax.set_xticks(positions, CLASSES, rotation=30, ha="right")
    ax.set_ylabel("share of images" if shares else "images"), ax.set_title(title)
    ax.legend(fontsize=8, ncol=2, loc="upper center", bbox_to_anchor=(0.5, -0.32))  # below: bars stay visible
    fig.tight_layout()
    return fig


def plot_confidences(histogram: list[int], title: str = "Prediction confidence"):
    fig, ax = _pyplot().subplots(figsize=(6, 3))
    edges = np.linspace(0, 1, len(histogram) + 1)
    ax.bar(edges[:-1], histogram, width=edges[1] - edges[0], align="edge", edgecolor="white")
    ax.set_xlabel("top-class probability"), ax.set_ylabel("images"), ax.set_title(title)
    fig.tight_layout()
    return fig


def plot_reliability(calibrations: dict[str, dict]):
    """Reliability diagrams side by side, one per version: accuracy against confidence in each
    bin of held-out images (the diagonal is perfect calibration), bar width by bin share."""
    fig, axes = _pyplot().subplots(1, len(calibrations), figsize=(4.2 * len(calibrations), 3.8), squeeze=False)
    for ax, (name, calib) in zip(axes[0], calibrations.items()):
        bins = calib["reliability"]
        edges = np.linspace(0, 1, len(bins["counts"]) + 1)
        filled = np.asarray(bins["counts"]) > 0
        ax.bar(edges[:-1][filled], np.asarray(bins["accuracy"])[filled], width=edges[1] - edges[0], align="edge",
               edgecolor="white", label="accuracy in bin")
        ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
        ax.plot(np.asarray(bins["confidence"])[filled], np.asarray(bins["accuracy"])[filled], "o-", color="C1",
                ms=3, label="confidence -> accuracy")
        ax.set_xlim(0, 1), ax.set_ylim(0, 1), ax.set_xlabel("confidence"), ax.set_ylabel("accuracy")
        ax.set_title(f"{name}\nECE {calib['ece']:.2%} (uncalibrated {calib['ece_before']:.2%})", fontsize=9)
        ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    return fig


def save_png(fig, path: Path) -> Path:
    fig.savefig(path, format="png", dpi=100)
    _pyplot().close(fig)
    return path


def png_bytes(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    _pyplot().close(fig)
    return buffer.getvalue()
