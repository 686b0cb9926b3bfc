"""Metrics agree with a hand computation; plots are valid PNG files."""
import numpy as np
import pytest
from PIL import Image

from cifar import CLASSES, evaluate


def test_metrics_on_a_hand_made_case():
    # 6 images: classes 0, 0, 1, 1, 2, 2; predictions 0, 1, 1, 1, 2, 0.
    y_true = np.array([0, 0, 1, 1, 2, 2])
    y_pred = np.array([0, 1, 1, 1, 2, 0])
    m = evaluate.compute_metrics(y_true, y_pred)
    assert m["accuracy"] == pytest.approx(4 / 6)
    airplane = m["per_class"]["airplane"]  # class 0: TP 1, FP 1, FN 1
    assert (airplane["precision"], airplane["recall"], airplane["f1"]) == pytest.approx((0.5, 0.5, 0.5))
    car = m["per_class"]["automobile"]     # class 1: TP 2, FP 1, FN 0
    assert (car["precision"], car["recall"]) == pytest.approx((2 / 3, 1.0))
    assert car["f1"] == pytest.approx(0.8)
    assert m["per_class"]["bird"]["recall"] == pytest.approx(0.5)
    assert m["per_class"]["cat"]["support"] == 0
    # Macro over all ten labels, absent classes counting as 0 (scikit-learn's zero_division=0).
    assert m["macro"]["recall"] == pytest.approx((0.5 + 1.0 + 0.5) / 10)
    assert m["confusion_matrix"][0][:3] == [1, 1, 0] and m["confusion_matrix"][2][:3] == [1, 0, 1]


def test_plots_are_png(tmp_path):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 10, 200)
    m = evaluate.compute_metrics(y, np.where(rng.random(200) < 0.7, y, rng.integers(0, 10, 200)))
    figures = {
        "confusion": evaluate.plot_confusion(m),
        "per_class": evaluate.plot_per_class(m),
        "history": evaluate.plot_history({"loss": [2, 1.5, 1.2], "accuracy": [0.3, 0.5, 0.6],
                                          "val_accuracy": [0.4, 0.5, 0.55], "val_loss": [1.9, 1.6, 1.5]}),
        "distribution": evaluate.plot_distribution({"train": {c: 5000 for c in CLASSES}}),
        "confidence": evaluate.plot_confidences([1] * 20),
    }
    for name, fig in figures.items():
        path = evaluate.save_png(fig, tmp_path / f"{name}.png")
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        with Image.open(path) as image:
            assert image.size[0] > 300 and image.size[1] > 200


def test_table_lists_every_class():
    m = evaluate.compute_metrics(np.arange(10), np.arange(10))
    table = evaluate.format_table(m)
    assert "accuracy 1.0000" in table and all(c in table for c in CLASSES)
