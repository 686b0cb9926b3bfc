"""AdaBN: a copy of the model whose BatchNorm statistics are re-estimated on the images at hand.

Under a shift (noise, blur, haze...) the stored statistics no longer fit the activations;
refreshing them alone recovers much of the accuracy. The pseudo-labels and the accuracy
estimate's second opinion both come from such a copy; the original keeps its statistics.
"""
from pathlib import Path

import keras
import numpy as np

from .. import model as net
from ..predict import Predictor
from ..retrain_rules import RETRAIN
from ..train import refresh_batchnorm


def adapted_copy(model, x: np.ndarray):
    """A copy of `model` (a Keras model, or a saved model's path) adapted to the images `x`, or
    None under RETRAIN["adapt_min"] images, too few to estimate the statistics."""
    if len(x) < RETRAIN["adapt_min"]:
        return None
    if isinstance(model, keras.Model):
        copy = keras.models.clone_model(model)
        copy.set_weights(model.get_weights())
    else:
        copy = net.load(model)
    refresh_batchnorm(copy, x)
    return copy


def upload_probabilities(model, x: np.ndarray, tta_level: int, temperature: float = 1.0, adapted=None) -> np.ndarray:
    """Class probabilities of unlabeled uploads from a copy of the model adapted to them
    (`adapted_copy`; `adapted`: one already made on these images), so the pseudo-labels taught
    to the new version are more often right; the plain model under RETRAIN["adapt_min"] images.
    `temperature`: the version's calibration, so the threshold reads as a probability of being
    right. `model`: a saved model's path, or a Keras model."""
    network = adapted if adapted is not None else adapted_copy(model, x)
    if network is None:
        network = net.load(model) if isinstance(model, (str, Path)) else model
    return Predictor(network, tta_level=tta_level, calibration={"temperature": temperature}).predict_arrays(x)
