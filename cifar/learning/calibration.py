"""Honest confidences: temperature scaling (Guo et al., 2017) and expected calibration error.

The network's logits are shrunk by label smoothing and the 1/9 logit scale, so its raw top-class
probability (about 72% on average) says far less than its accuracy (about 92%). One temperature,
fitted on labeled held-out images when a version is made, divides the logits before the softmax:
the ranking of the classes (so accuracy) is untouched, the probabilities become truthful.
"""
from pathlib import Path

import numpy as np
from scipy.optimize import minimize_scalar

ECE_BINS = 15  # Guo et al.'s choice; the Metrics tab and the benchmark use the same


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = np.asarray(logits, np.float64) / temperature
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    z = np.asarray(logits, np.float64) / temperature
    z -= z.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-log_p[np.arange(len(labels)), labels].mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature that minimises the negative log-likelihood of the labels (one scalar,
    so a few hundred images fit it without overfitting)."""
    result = minimize_scalar(lambda log_t: nll(logits, labels, float(np.exp(log_t))),
                             bounds=(np.log(0.01), np.log(100.0)), method="bounded")
    return float(np.exp(result.x))


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


# --- a version's calibration: fitted once when the version is made, stored beside its model --

CALIBRATION_FILE = "calibration.json"


def fit(logits: np.ndarray, labels: np.ndarray, tta_level: int, fitted_on: str) -> dict:
    """Everything the app needs to turn a version's logits into honest numbers: the temperature,
    its reliability before and after, and the reference the accuracy estimator and the monitor
    compare live traffic against (ATC threshold, held-out accuracy, confidence histogram)."""
    from . import estimate

    temperature = fit_temperature(logits, labels)
    raw, calibrated = softmax(logits), softmax(logits, temperature)
    after = reliability(calibrated, labels)
    return {
        "method": "temperature scaling (Guo et al., 2017), negative log-likelihood",
        "temperature": round(temperature, 6), "fitted_on": fitted_on, "count": int(len(labels)),
        "tta_level": tta_level, "bins": ECE_BINS,
        "ece_before": reliability(raw, labels)["ece"], "ece": after["ece"], "reliability": after,
        "reference_accuracy": after["top1"],
        "atc_threshold": estimate.fit_threshold(calibrated, labels),
        "confidence_histogram": np.histogram(calibrated.max(axis=1), bins=20, range=(0, 1))[0].tolist(),
    }


def fit_on_holdout(predictor) -> dict:
    """Calibration of `predictor`'s model on the shipped held-out images."""
    from .. import data

    x, y = data.holdout()
    return fit(predictor.logits(x), y, predictor.tta_level, data.HOLDOUT_NAME)


def for_version(version, tta_level: int, cache_dir=None, predictor=None) -> dict:
    """A registry version's calibration at this TTA level: the one stored with it, else one
    cached earlier, else (given its `predictor`) fitted now on the held-out images and cached.
    Versions are immutable, so a late calibration goes to the cache, never into the version.
    {} when there is none and no predictor to fit one with."""
    import json

    stored = version.calibration
    if stored.get("tta_level") == tta_level:
        return stored
    cached = Path(cache_dir) / f"calibration-{version.id}-tta{tta_level}.json" if cache_dir else None
    if cached and cached.exists():
        return json.loads(cached.read_text())
    if predictor is None:
        return {}
    fitted = fit_on_holdout(predictor)
    if cached:
        from ..registry import write_json_atomic

        write_json_atomic(cached, fitted)
    return fitted
