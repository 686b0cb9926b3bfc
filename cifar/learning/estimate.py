"""Accuracy without labels: the lower of the agreement of a copy of the model adapted to the images
and Confidence Optimal Transport (COT); Average Thresholded Confidence (Garg et al., ICLR 2022)
where there are too few images for a copy or they look like the training images.

Agreement: a copy of the model re-estimates its BatchNorm statistics on the images (AdaBN, as the
pseudo-labels do) and gives a second opinion: the mean probability it gives the served model's
answers. It needs 200 images or more (`RETRAIN["adapt_min"]`).

ATC: on labeled held-out images, find the score threshold above which exactly as many images lie
as the model gets right; on any unlabeled set, the share of images above it is the estimated
accuracy. The score is the negative entropy of the calibrated probabilities (ATC-NE). It fails
where a shift makes the model confidently wrong, and at chance level (almost nothing above the
threshold while a tenth of guesses are right).

COT, Confidence Optimal Transport (Lu et al., NeurIPS 2023): the served probabilities moved at least
cost onto one-hot labels in the training mix (the ten classes equally); the cost of moving an image to
class k is 1 - p_k, so the share left is the accuracy expected if the images hold that mix. Where the
model answers one class for most images (noise, snow) it cannot be right on all of them, and COT says so.

The estimate is the lower of the agreement and COT, the copy's probabilities at its single view's
temperature times COPY_TEMPERATURE_SCALE. Chosen on CIFAR-10-C's 4 held-out corruptions and clean
images only (`python -m cifar bench-corruptions`, RESULTS.md, session 18), among ATC, agreement, COT
and their combinations, then the scale: off by 1.24 points on average and 2.92 at worst on the
held-out 8 cells (agreement at the served temperature 1.90 and 3.12; the lower of ATC and agreement,
used before 2026-12-02, 4.63 and 11.7); on the 15 reported corruptions 2.13 on average, 7.33 at worst
(before: 2.86 and 9.86; JPEG and snow at severity 5, where the adapted copy shares the served model's
errors). With the scale, COT is the lower in none of the 38 corruption cells: it stays as the guard
for answers piled on one class (0.2 s for 1,000 images). Measured on an AVX2-only EPYC.

Except where the images look like the training images: when ATC is within `FAMILIAR` of the
held-out reference there is no shift for the adapted copy to correct, and its own assumption (the
images hold the classes in the training mix) is the larger risk. 1,000 clean images of one class
gave an agreement of 23.0% where the model was 93.9% right (ATC 91.7%); of five classes 74.6% against
91.3% (ATC 90.7%). No corruption of the 19 keeps ATC that close to the reference at severities 3 and 5
except saturate 3 (held out; ATC 87.8%, true 86.6%), so the choice on the 15 is unchanged.
"""
import numpy as np
from scipy import sparse
from scipy.optimize import linprog

from ..retrain_rules import RETRAIN

# The adapted copy's confidence is calibrated on clean images; on shifted ones, with statistics
# re-estimated there, it is surer than it is right. Its temperature is its single view's calibration
# times this, chosen on the held-out corruptions only (RESULTS.md, session 18: 1.00 to 1.50 by
# 0.05; 1.15 had the lowest mean error there, 1.24 points against 1.56 at 1.00).
COPY_TEMPERATURE_SCALE = 1.15
FAMILIAR = 0.05  # ATC this close to the held-out reference: images like the training ones (the alert's margin too)
TRANSPORT_MAX_IMAGES = 2000  # COT is solved on at most this many, drawn at random: 0.8 s here (all of 10,000: 10 s)


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


def transport(probabilities: np.ndarray) -> float:
    """COT's expected accuracy: 1 minus the least cost of moving each image's probabilities (mass
    1/N each) onto one-hot labels of the ten classes in equal shares, moving to class k costing
    1 - p_k (half the L1 distance to its one-hot vector). A linear program (HiGHS)."""
    p = np.asarray(probabilities, np.float64)
    if len(p) > TRANSPORT_MAX_IMAGES:
        # A fixed random draw: evenly spaced rows would alias with any order in the images.
        p = p[np.random.default_rng(0).choice(len(p), TRANSPORT_MAX_IMAGES, replace=False)]
    n, k = p.shape
    each_image = sparse.kron(sparse.eye(n), np.ones((1, k)))    # x[i, :] sums to 1/N
    each_class = sparse.kron(np.ones((1, n)), sparse.eye(k))    # x[:, c] sums to 1/K
    solved = linprog((1 - p).ravel(), A_eq=sparse.vstack([each_image, each_class]).tocsr(),
                     b_eq=np.concatenate([np.full(n, 1 / n), np.full(k, 1 / k)]), bounds=(0, None), method="highs")
    return float(1 - solved.fun)


def shifted_estimate(probabilities: np.ndarray, adapted: np.ndarray) -> float:
    """The estimate where the images do not look like the training ones: the lower of the adapted
    copy's agreement and COT (see the module's text)."""
    return min(agreement(probabilities, adapted), transport(probabilities))


def estimate_accuracy(probabilities: np.ndarray, threshold: float, adapted: np.ndarray | None = None,
                      reference: float | None = None) -> float | None:
    """Estimated accuracy on these (unlabeled) images; None for an empty set. `adapted`: the
    probabilities of a copy of the model adapted to the same images: with it the estimate is the
    lower of its agreement and COT, unless ATC is within FAMILIAR of the held-out `reference`
    accuracy (see the module's text); ATC otherwise."""
    if not len(probabilities):
        return None
    atc = estimate_from_scores(score(probabilities), threshold)
    if adapted is None or looks_familiar(atc, reference):
        return atc
    return shifted_estimate(probabilities, adapted)


def looks_familiar(atc: float, reference: float | None) -> bool:
    """Whether ATC's estimate is close enough to the held-out reference to trust it over the adapted copy."""
    return reference is not None and atc >= reference - FAMILIAR


def copy_temperature(calibration: dict) -> float:
    """The temperature of the adapted copy's probabilities: the version's single-view calibration
    (the copy sees one view) times COPY_TEMPERATURE_SCALE; the served one's where that is unknown."""
    single = calibration.get("single_view_temperature")  # handed with a lower level's (calibration.for_version)
    if single is None:  # a stored calibration keeps the levels below its own in by_level
        single = calibration.get("by_level", {}).get("0", {}).get("temperature", calibration.get("temperature", 1.0))
    return float(single) * COPY_TEMPERATURE_SCALE


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
    copy = adapted_view(predictor.model, x, copy_temperature(predictor.calibration), adapted)
    return atc if copy is None else shifted_estimate(probabilities, copy)
