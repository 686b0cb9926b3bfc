"""Honest confidences: temperature scaling (Guo et al., 2017) and expected calibration error.

The network's logits are shrunk by label smoothing and the 1/9 logit scale, so its raw top-class
probability (about 72% on average) says far less than its accuracy (about 92%). One temperature,
fitted on labeled held-out images when a version is made, divides the logits before the softmax:
the ranking of the classes (so accuracy) is untouched, the probabilities become truthful.
"""
import json
from pathlib import Path

import numpy as np

from .. import data
from ..evaluate import ECE_BINS, reliability
from ..logits import softmax
from ..registry import write_json_atomic
from . import estimate


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    z = np.asarray(logits, np.float64) / temperature
    z -= z.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-log_p[np.arange(len(labels)), labels].mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature that minimises the negative log-likelihood of the labels (one scalar,
    so a few hundred images fit it without overfitting)."""
    from scipy.optimize import minimize_scalar  # 0.3 s to import: here, not in every app's start

    result = minimize_scalar(lambda log_t: nll(logits, labels, float(np.exp(log_t))),
                             bounds=(np.log(0.01), np.log(100.0)), method="bounded")
    return float(np.exp(result.x))


# --- a version's calibration: fitted once when the version is made, stored beside its model --

CALIBRATION_FILE = "calibration.json"


def fit(logits: np.ndarray, labels: np.ndarray, tta_level: int, fitted_on: str) -> dict:
    """Everything the app needs to turn a version's logits into honest numbers: the temperature,
    its reliability before and after, and the reference the accuracy estimator and the monitor
    compare live traffic against (ATC threshold, held-out accuracy, confidence histogram)."""
    temperature = fit_temperature(logits, labels)
    raw, calibrated = softmax(logits), softmax(logits, temperature)
    after = reliability(calibrated, labels)
    return {
        "method": "temperature scaling (Guo et al., 2017), negative log-likelihood",
        "temperature": round(temperature, 6), "fitted_on": fitted_on, "count": len(labels),
        "tta_level": tta_level, "bins": ECE_BINS,
        "ece_before": reliability(raw, labels)["ece"], "ece": after["ece"], "reliability": after,
        "reference_accuracy": after["top1"],
        "atc_threshold": estimate.fit_threshold(calibrated, labels),
        "confidence_histogram": np.histogram(calibrated.max(axis=1), bins=20, range=(0, 1))[0].tolist(),
    }


def fit_by_level(logits: dict[int, np.ndarray], labels: np.ndarray, tta_level: int, fitted_on: str) -> dict:
    """`fit` at `tta_level`, with the levels below it in `by_level` (their logits come free with
    the same pass: cifar.tta.logits_by_level), so a CPU that serves fewer views needs no Keras
    pass to calibrate."""
    return {**fit(logits[tta_level], labels, tta_level, fitted_on),
            "by_level": {str(level): fit(logits[level], labels, level, fitted_on)
                         for level in sorted(logits) if level != tta_level}}


def fit_on_holdout(predictor) -> dict:
    """Calibration of `predictor`'s model on the shipped held-out images."""
    return fit_held_out_logits(predictor.logits(data.holdout()[0]), predictor.tta_level)


def fit_held_out_logits(logits, tta_level: int) -> dict:
    """Calibration from a model's `logits` on the shipped held-out images at `tta_level`."""
    return fit(logits, data.holdout()[1], tta_level, data.HOLDOUT_NAME)


def for_version(version, tta_level: int, cache_dir=None, held_out_logits=None) -> dict:
    """A registry version's calibration at this TTA level: the one stored with it (or beside it
    for a lower level, `by_level`), else one
    cached earlier, else (given `held_out_logits`, a function giving its logits on the held-out
    images at that level) fitted now and cached. Versions are immutable, so a late calibration
    goes to the cache, never into the version. {} when there is none and nothing to fit one with."""
    stored = version.calibration
    if stored.get("tta_level") == tta_level:
        return stored
    by_level = stored.get("by_level", {})
    if str(tta_level) in by_level:  # with level 0's temperature where stored, for the adapted copy (estimate)
        single = {"single_view_temperature": by_level["0"]["temperature"]} if "0" in by_level else {}
        return {**by_level[str(tta_level)], **single}
    cached = Path(cache_dir) / f"calibration-{version.id}-tta{tta_level}.json" if cache_dir else None
    if cached and cached.exists():
        return json.loads(cached.read_text())
    if held_out_logits is None:
        return {}
    fitted = fit_held_out_logits(held_out_logits(), tta_level)
    if cached:
        write_json_atomic(cached, fitted)
    return fitted
