"""The shipped model, loaded the way the app loads it, still scores what its metadata records."""
import numpy as np

from cifar import config, data
from cifar.registry import Registry
from cifar.service import Service


def test_shipped_model_accuracy_on_fixed_subset(test_split):
    x, y = test_split
    shipped = Registry(config.shipped_models_dir()).current()
    service = Service()  # the app's own loading path: registry seeding, TTA level, warm-up
    recorded = shipped.metrics["accuracy_by_tta_level"][str(service.tta_level)]  # at the level it serves at
    assert service.predictor.version == shipped.id
    subset = data.balanced_subset(y, 200, seed=123)  # fixed 2,000 images
    accuracy = float((service.predictor.predict_arrays(x[subset]).argmax(1) == y[subset]).mean())
    assert accuracy >= recorded - 0.01, f"{accuracy:.4f} on the subset vs {recorded:.4f} recorded"


def test_shipped_version_is_complete():
    shipped = Registry(config.shipped_models_dir()).current()
    meta, metrics = shipped.metadata, shipped.metrics
    for key in ("command", "seed", "train_data", "train_count", "eval_count", "libraries", "train_seconds",
                "file_size_bytes", "serving", "hyperparameters"):
        assert key in meta, key
    assert meta["file_size_bytes"] == shipped.model_path.stat().st_size
    assert set(meta["serving"]) == {"1", "32", "256"}
    assert np.array(metrics["confusion_matrix"]).sum() == metrics["count"] == 10000
    assert (shipped.path / "README.md").read_text().startswith("---\n")
