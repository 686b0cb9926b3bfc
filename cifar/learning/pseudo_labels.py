"""Labels for unlabeled uploads: from a copy of the model adapted to them, with a junk guard."""
from pathlib import Path

import numpy as np

from ..train import RETRAIN, refresh_batchnorm


def pseudo_labels(probabilities: np.ndarray, threshold: float, min_fraction: float = 0.0,
                  min_recognised: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Hard labels and the mask of those to train on: every prediction at or above `threshold`,
    plus, class by class, the most confident `min_fraction` of the images predicted as that class
    (so a shift that lowers all confidences still yields class-balanced pseudo-labels). When
    fewer than `min_recognised` of the images clear the threshold, none is kept: the model does
    not recognise them as pictures of its classes, and their 'surest' labels would be noise."""
    labels, confidence = probabilities.argmax(axis=1), probabilities.max(axis=1)
    keep = confidence >= threshold
    if len(keep) and keep.mean() < min_recognised:
        return labels, np.zeros_like(keep)
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        surest = members[np.argsort(-confidence[members])[:int(np.ceil(min_fraction * len(members)))]]
        keep[surest] = True
    return labels, keep


def adapted_copy(model, x: np.ndarray):
    """A copy of `model` (a Keras model, or a saved model's path) whose BatchNorm statistics are
    re-estimated on the images `x` themselves (AdaBN), or None under RETRAIN["adapt_min"] images,
    too few to estimate them. Under a shift (noise, blur, haze...) the stored statistics no longer
    fit the activations; refreshing them alone recovers much of the accuracy. The original keeps
    its statistics."""
    import keras

    from ..predict import Predictor

    if len(x) < RETRAIN["adapt_min"]:
        return None
    if isinstance(model, keras.Model):
        copy = keras.models.clone_model(model)
        copy.set_weights(model.get_weights())
    else:
        copy = Predictor.load(model).model
    refresh_batchnorm(copy, x)
    return copy


def upload_probabilities(model, x: np.ndarray, tta_level: int, temperature: float = 1.0, adapted=None) -> np.ndarray:
    """Class probabilities of unlabeled uploads from a copy of the model adapted to them
    (`adapted_copy`; `adapted`: one already made on these images), so the pseudo-labels taught
    to the new version are more often right; the plain model under RETRAIN["adapt_min"] images.
    `temperature`: the version's calibration, so the threshold reads as a probability of being
    right. `model`: a saved model's path, or a Keras model."""
    from ..predict import Predictor

    network = adapted if adapted is not None else adapted_copy(model, x)
    if network is None:
        network = model if not isinstance(model, (str, Path)) else Predictor.load(model).model
    return Predictor(network, tta_level=tta_level, calibration={"temperature": temperature}).predict_arrays(x)
