"""Accuracy without labels: the agreement of a copy of the model adapted to the images, and
Average Thresholded Confidence (Garg et al., ICLR 2022) where there are too few images for one.

Agreement: a copy of the model re-estimates its BatchNorm statistics on the images (AdaBN, as the
pseudo-labels do) and gives a second opinion: the mean probability it gives the served model's
answers. It needs 200 images or more (`RETRAIN["adapt_min"]`).

ATC: on labeled held-out images, find the score threshold above which exactly as many images lie
as the model gets right; on any unlabeled set, the share of images above it is the estimated
accuracy. The score is the negative entropy of the calibrated probabilities (ATC-NE). It fails
where a shift makes the model confidently wrong, and at chance level (almost nothing above the
threshold while a tenth of guesses are right).

Chosen on CIFAR-10-C's 4 held-out corruptions and clean images only (`python -m cifar
bench-corruptions`, RESULTS.md), among ATC, agreement, their lower, mean and higher: agreement alone
was off by 1.97 points on average and 3.11 at worst there (the lower of the two, used before, 4.63
and 11.7); on the 15 reported corruptions it is off by 2.85 on average, 9.1 at worst (snow and JPEG
at severity 5, where the adapted copy shares the served model's errors).

Except where the images look like the training images: when ATC is within `FAMILIAR` of the
held-out reference there is no shift for the adapted copy to correct, and its own assumption (the
images hold the classes in the training mix) is the larger risk. 1,000 clean images of one class
gave an agreement of 23.0% where the model was 93.9% right (ATC 91.7%); of five classes 74.6% against
91.3% (ATC 90.7%). No corruption of the 19 keeps ATC that close to the reference at severities 3 and 5
except saturate 3 (held out; ATC 87.8%, true 86.6%), so the choice on the 15 is unchanged.
"""
import numpy as np

from ..retrain_rules import RETRAIN

FAMILIAR = 0.05  # ATC this close to the held-out reference: images like the training ones (the alert's margin too)


def score(probabilities: np.ndarray) -> np.ndarray:
    """Negative entropy of each row: 0 for a certain answer, -log(10) for a uniform one."""
    p = np.clip(np.asarray(probabilities, np.float64), 1e-12, 1.0)
    return (p * np.log(p)).sum(axis=1)


def fit_threshold(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """The score threshold whose share of held-out images above it equals their accuracy."""
    accuracy = float((probabilities.argmax(axis=1) == labels).mean())
    return float(np.quantile(score(probabilities), 1.0 - accuracy))


def estimate_from_scores(scores: np.ndarray, threshold: float) -> float | None:
    scores = np.asarray(scores)
    return float((scores > threshold).mean()) if len(scores) else None


def agreement(probabilities: np.ndarray, adapted: np.ndarray) -> float:
    """The adapted copy's second opinion: the mean probability it gives the served answers."""
    return float(adapted[np.arange(len(probabilities)), probabilities.argmax(axis=1)].mean())


def estimate_accuracy(probabilities: np.ndarray, threshold: float, adapted: np.ndarray | None = None,
                      reference: float | None = None) -> float | None:
    """Estimated accuracy on these (unlabeled) images; None for an empty set. `adapted`: the
    probabilities of a copy of the model adapted to the same images, whose agreement is the
    estimate when there is one, unless ATC is within FAMILIAR of the held-out `reference`
    accuracy (see the module's text); ATC otherwise."""
    if not len(probabilities):
        return None
    atc = estimate_from_scores(score(probabilities), threshold)
    if adapted is None or looks_familiar(atc, reference):
        return atc
    return agreement(probabilities, adapted)


def looks_familiar(atc: float, reference: float | None) -> bool:
    """Whether ATC's estimate is close enough to the held-out reference to trust it over the adapted copy."""
    return reference is not None and atc >= reference - FAMILIAR


def adapted_view(model, x: np.ndarray, temperature: float, adapted=None) -> np.ndarray | None:
    """The second opinion: probabilities of a copy of `model` (a Keras model or a saved one's
    path) whose BatchNorm statistics are re-estimated on `x` (`adapted`: that copy, if the caller
    has made it); None under 200 images, too few to re-estimate them. One view a image (no
    test-time augmentation): 6x cheaper, as accurate here."""
    from .adapt import adapted_copy, upload_probabilities  # Keras: loaded by the first estimate that needs it

    adapted = adapted if adapted is not None else adapted_copy(model, x)
    if adapted is None:
        return None
    return upload_probabilities(model, x, tta_level=0, temperature=temperature, adapted=adapted)


def estimate_served(predictor, probabilities: np.ndarray, x: np.ndarray | None = None, adapted=None) -> float | None:
    """Expected accuracy of `predictor` (a calibrated Predictor) on unlabeled images from the
    `probabilities` it served them (None without a calibration); given the images `x` too, checked
    against a copy adapted to them (`adapted`: that copy, if the caller already made it)."""
    if "atc_threshold" not in predictor.calibration or not len(probabilities):
        return None
    threshold, reference = predictor.calibration["atc_threshold"], predictor.calibration.get("reference_accuracy")
    atc = estimate_from_scores(score(probabilities), threshold)
    if x is None or looks_familiar(atc, reference) or (adapted is None and len(x) < RETRAIN["adapt_min"]):
        return atc  # no adapted copy needed, or too few images for one (nor the Keras model loaded)
    copy = adapted_view(predictor.model, x, predictor.temperature, adapted)
    return atc if copy is None else agreement(probabilities, copy)
