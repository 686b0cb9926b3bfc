"""Logits to probabilities: the softmax at a version's temperature (its calibration). NumPy only,
so what serves through OpenVINO needs no Keras."""
import numpy as np


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Class probabilities of `logits` divided by `temperature` (a version's calibration)."""
    z = np.asarray(logits, np.float64) / temperature
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)
