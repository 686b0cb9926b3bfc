"""Which unlabeled uploads to train on, and as what: confident guesses, each class's surest share,
and a junk guard. The probabilities come from a copy adapted to the uploads (cifar.learning.adapt)."""
import numpy as np


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
