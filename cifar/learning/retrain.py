"""One retrain: pseudo-label the uploads, fine-tune, calibrate, judge, and the promotion rule.

The caller (cifar.service) owns the locks, the swap of the serving predictor and the Hub push;
this module only turns (current version, uploads) into a saved new version and a verdict.
"""
import logging
import tempfile
import time
from pathlib import Path

import numpy as np

from .. import CLASSES, config, data, evaluate, runtime, train, tta, versions
from ..logits import softmax
from ..predict import Predictor
from ..retrain_rules import PROMOTION_TOLERANCE, RETRAIN, NothingToLearn
from . import calibration
from .adapt import adapted_copy, upload_probabilities
from .estimate import estimate_served
from .pseudo_labels import pseudo_labels

log = logging.getLogger("cifar")

MEASURE_MIN_UPLOADS = 200   # unlabeled uploads enough to time this machine's Keras by
SLOW_SECONDS_PER_VIEW = 1 / 150  # else priced as an AVX2-only EPYC (Keras float32, 6 views at batch 32)


def judge(predictor: Predictor) -> tuple[dict, dict, dict[int, np.ndarray]]:
    """Metrics of a freshly trained model on the held-out images, its calibration fitted on the
    same logits (one pass of the network for both; the levels below the served one come free),
    and the logits by level (the runtime's check uses them)."""
    x, y = data.holdout()
    started = time.time()
    logits = predictor.logits_by_level(x)
    fitted = calibration.fit_by_level(logits, y, predictor.tta_level, data.HOLDOUT_NAME)
    probabilities = softmax(logits[predictor.tta_level], fitted["temperature"])
    metrics = evaluate.metrics_from_probabilities(probabilities, y, predictor.tta_level, time.time() - started)
    return metrics, fitted, logits


# Work after training, for the budget: OpenVINO int8 costs at most half a Keras view (0.27 on
# AMX, 0.52 with oneDNN capped at AVX-512; an AVX2-only EPYC 0.38); fixed costs (export,
# quantization, loading, saving) about 10 s.
RUNTIME_VIEW_COST, FIXED_SECONDS = 0.5, 10.0


def training_budget(elapsed: float, seconds_per_view: float, seconds_per_refresh_image: float, uploads: int,
                    views: int, train_images: int) -> float:
    """Seconds the training may take so the whole retrain ends within RETRAIN["seconds"] (or
    CIFAR_RETRAIN_S): what is
    left after the time spent so far and the work still to come (the final BatchNorm refresh,
    judging on the held-out images, the runtime's conversion and check, the estimates on the
    uploads), priced at the Keras speeds measured while pseudo-labelling on this machine."""
    keras_views = 2000 * views + uploads                                # judge; the adapted copy's view
    runtime_views = 2000 * views + 2 * uploads * views                  # the check; before and after
    refresh_images = train.refresh_images(train_images) + train.refresh_images(uploads)  # new version's; adapted copy's
    after_training = (seconds_per_view * (keras_views + RUNTIME_VIEW_COST * runtime_views)
                      + seconds_per_refresh_image * refresh_images + FIXED_SECONDS)
    return max(RETRAIN["min_train_seconds"], config.retrain_seconds(RETRAIN["seconds"]) - elapsed - after_training)


def _label_uploads(parent, x_up: np.ndarray, y_up: np.ndarray, serving: Predictor, threshold: float,
                   started: float) -> dict:
    """Pseudo-labels for the unlabeled uploads, from one copy of the current model adapted to them
    (it also gives the "before" estimate its second opinion), and this machine's Keras speeds
    measured on the way (the training budget prices the rest of the retrain at them).

    Raises:
        NothingToLearn: the model recognises too few unlabeled uploads (junk).
    """
    unlabeled = y_up < 0
    mark = time.time()
    adapted_parent = adapted_copy(parent.model_path, x_up)
    refreshed = time.time()
    probabilities = (upload_probabilities(parent.model_path, x_up[unlabeled], serving.tta_level, serving.temperature,
                                          adapted=adapted_parent) if unlabeled.any() else np.zeros((0, 10)))
    seconds = time.time() - started
    # Without enough unlabeled uploads to measure the speeds, priced as a slow CPU would be (AVX2, float32).
    measured = adapted_parent is not None and unlabeled.sum() >= MEASURE_MIN_UPLOADS
    seconds_per_view = ((time.time() - refreshed) / (int(unlabeled.sum()) * tta.VIEWS[serving.tta_level])
                        if measured else SLOW_SECONDS_PER_VIEW)
    seconds_per_refresh_image = ((refreshed - mark) / train.refresh_images(len(x_up))
                                 if measured else 1.5 * SLOW_SECONDS_PER_VIEW)
    guessed, confident = pseudo_labels(probabilities, threshold, RETRAIN["min_fraction"],
                                       RETRAIN["min_recognised"])
    labels = y_up.copy()
    labels[np.flatnonzero(unlabeled)] = guessed
    keep = ~unlabeled
    keep[np.flatnonzero(unlabeled)[confident]] = True
    if not keep.any():
        recognised = float((probabilities.max(axis=1) >= threshold).mean()) if len(probabilities) else 0.0
        raise NothingToLearn(
            f"Not retrained, nothing changed: the current model recognises only {recognised:.1%} of the "
            f"{int(unlabeled.sum()):,} unlabeled uploads with {threshold:.0%} confidence or more (a retrain "
            f"needs {RETRAIN['min_recognised']:.0%}), so they do not look like pictures of its ten "
            "classes. Upload labeled images (class-named folders or file names) or a lower threshold.")
    return {"labels": labels, "keep": keep, "unlabeled": unlabeled, "confident": confident,
            "adapted_parent": adapted_parent, "seconds": seconds, "seconds_per_view": seconds_per_view,
            "seconds_per_refresh_image": seconds_per_refresh_image}


def hold_back(unlabeled: np.ndarray, seed: int) -> np.ndarray:
    """Which uploads the retrain keeps out of training (a mask): a random RETRAIN["hold_back"] of the
    unlabeled ones, so the new version's accuracy on such images can be estimated on some it never
    learned from (on the ones it trained on it is sure of its own pseudo-labels, right or wrong:
    25 points optimistic on CIFAR-10-C's blurs, RESULTS.md). None where that share would be under
    RETRAIN["adapt_min"] images, too few for the estimate's adapted copy to be judged on."""
    candidates = np.flatnonzero(unlabeled)
    count = int(len(candidates) * RETRAIN["hold_back"])
    mask = np.zeros(len(unlabeled), bool)
    if count >= RETRAIN["adapt_min"]:
        mask[np.random.default_rng(seed).choice(candidates, count, replace=False)] = True
    return mask


def estimate_after(candidate: Predictor, x_up: np.ndarray, held_back: np.ndarray) -> float | None:
    """The new version's estimated accuracy on images like the uploads: judged on the held-back ones
    (its adapted copy's statistics taken from every upload: they need no labels), else on all of
    them, then optimistic (it learned from them)."""
    if not held_back.any():
        return estimate_served(candidate, candidate.predict_arrays(x_up), x_up)
    judged = x_up[held_back]
    return estimate_served(candidate, candidate.predict_arrays(judged), judged, adapted_copy(candidate.model, x_up))


def _judge_convert_save(registry, result, serving: Predictor, x_up: np.ndarray, held_back: np.ndarray, adapted_parent,
                        before: dict, metadata: dict, phases: dict, report) -> tuple:
    """Judge and calibrate the trained model on the held-out images, apply the promotion rule,
    convert it for the serving runtime if it will serve, estimate its accuracy on the uploads (and
    the current one's), and save it as a new version. Returns the version, its held-out metrics,
    its predictor and whether it is promoted."""
    report(0.82, "judging and calibrating the new version on held-out images")
    mark = time.time()
    candidate = Predictor(result.model, tta_level=serving.tta_level)
    after, fitted, holdout_logits = judge(candidate)
    phases["judging"], mark = time.time() - mark, time.time()
    candidate.calibrate(fitted)
    promoted = after["accuracy"] >= before["accuracy"] - PROMOTION_TOLERANCE
    with tempfile.TemporaryDirectory(prefix="runtime-") as staging:
        # Only a version that will serve is converted now: a turned-down one gets its runtime where
        # it is first served, if ever (2,000 uploads turned down: 34.6 -> 30.6 s on the AMX Xeon).
        if promoted:
            report(0.86, "converting the new version for the serving runtime and checking it")
            runtime.build(result.model, Path(staging), serving.tta_level,
                          {level: logits.argmax(1) for level, logits in holdout_logits.items()})
            candidate.use_runtime(staging)  # the estimates go through what will serve
        else:
            candidate.runtime = runtime.not_converted()
        phases["conversion"], mark = time.time() - mark, time.time()
        report(0.9, "estimating accuracy on the uploads, before and after")
        metadata["estimated_accuracy_on_uploads"] = {  # after: on the held-back uploads, if any (metadata's "held_back")
            "before": estimate_served(serving, serving.predict_arrays(x_up), x_up, adapted_parent),
            "after": estimate_after(candidate, x_up, held_back)}
        phases["estimates"], mark = time.time() - mark, time.time()
        metadata.update(eval_data=data.HOLDOUT_NAME, eval_count=after["count"])
        log.info("retrain trained in %.0f s; saving the new version", result.seconds)
        report(0.93, "saving the new version")
        version = versions.save_model_version(registry, "retrain", result.model, metadata, after, result.history,
                                              calibration=fitted, built_runtime=Path(staging), convert=promoted)
        phases["saving"] = time.time() - mark
    candidate.version = version.id
    if promoted:
        candidate.use_runtime(version.path)  # it serves through its checked OpenVINO model
    return version, after, candidate, promoted


def run(registry, uploads, serving: Predictor, before: dict, threshold: float, epochs: int | None,
        report, started: float | None = None) -> tuple[dict, Predictor]:
    """Fine-tune the current version on every upload and save the result as a new version.

    `serving` is the current version's predictor, `before` its held-out metrics. Returns the
    result (what the UI shows) and a predictor of the new version, ready to serve if promoted.
    `started` (time.time()): when the retrain was asked for, if earlier than this call (a process
    started for it); the time budget counts from then.

    Raises:
        NothingToLearn: no uploads, or unlabeled uploads the model does not recognise (junk).
    """
    asked, started = started or time.time(), time.time()
    x_up, y_up, records = uploads.load()
    if len(x_up) == 0:
        raise NothingToLearn("Nothing to retrain on: upload images first (Bulk upload tab).")
    parent = registry.current()
    log.info("retrain started on %d uploads from %s", len(x_up), parent.id)
    report(0.02, "pseudo-labelling unlabeled uploads")
    labelled = _label_uploads(parent, x_up, y_up, serving, threshold, started)
    labels, keep, unlabeled, confident = (labelled[k] for k in ("labels", "keep", "unlabeled", "confident"))
    held_back = hold_back(unlabeled, seed=int(started))
    keep, confident = keep & ~held_back, confident & ~held_back[unlabeled]
    phases = {"starting": started - asked, "pseudo-labels": labelled["seconds"]}
    report(0.05, "loading original training images to mix in")
    x_replay, y_replay = data.replay(RETRAIN["replay"], seed=int(started))
    reviewed = np.array([r["source"] == "review" for r in records], bool)
    repeats = RETRAIN["upload_repeats"]  # uploads seen this many times an epoch
    extra = RETRAIN["review_repeats"] - 1  # a person's label: worth more than a guess
    x_train = np.concatenate([*[x_up[keep]] * repeats, *[x_up[reviewed]] * extra, x_replay])
    y_train = np.concatenate([*[labels[keep]] * repeats, *[labels[reviewed]] * extra, y_replay])
    budget = training_budget(time.time() - asked, labelled["seconds_per_view"], labelled["seconds_per_refresh_image"],
                             len(x_up), tta.VIEWS[serving.tta_level], len(x_train))
    result = train.finetune(parent.model_path, x_train, y_train, epochs, time_budget_s=budget,
                            report=lambda f, m: report(0.08 + 0.72 * f, f"training: {m}"))
    phases["training"] = result.seconds
    metadata = {
        "parent": parent.id, "train_seconds": round(result.seconds, 1), "epochs": result.epochs,
        "train_count": len(x_train),
        "train_count_per_class": {c: int((y_train == i).sum()) for i, c in enumerate(CLASSES)},
        "uploads": len(x_up), "uploads_labeled": int((~unlabeled).sum()),
        "uploads_reviewed": int(reviewed.sum()), "train_budget_seconds": round(budget, 1),
        "train_steps": result.history.get("steps"), "pseudo_threshold": threshold,
        "pseudo_candidates": int(unlabeled.sum()), "pseudo_used": int(confident.sum()),
        "held_back": int(held_back.sum()), "replay_count": len(x_replay),
    }
    version, after, candidate, promoted = _judge_convert_save(registry, result, serving, x_up, held_back,
                                                              labelled["adapted_parent"], before, metadata, phases,
                                                              report)
    if promoted:
        reason = (f"held-out accuracy {after['accuracy']:.2%} vs {before['accuracy']:.2%} "
                  f"(tolerance {PROMOTION_TOLERANCE:.0%})")
        registry.promote(version.id, reason=reason)
        why = f"Promoted: {reason}."
    else:
        why = (f"Not promoted: held-out accuracy fell from {before['accuracy']:.2%} to {after['accuracy']:.2%}, "
               f"more than the {PROMOTION_TOLERANCE:.0%} tolerance. {parent.id} stays current.")
    return {"version": version.id, "promoted": promoted, "message": why, "before": before, "after": after,
            "pseudo_used": int(confident.sum()), "pseudo_candidates": int(unlabeled.sum()),
            "labeled": int((~unlabeled).sum()), "reviewed": int(reviewed.sum()), "held_back": int(held_back.sum()),
            "estimated_on_uploads": metadata["estimated_accuracy_on_uploads"],
            "uploads": len(x_up), "seconds": round(time.time() - asked, 1),
            "phases": {k: round(v, 1) for k, v in phases.items()}, "train_budget_seconds": round(budget, 1),
            "train_steps": result.history.get("steps"), "runtime": runtime.describe(candidate.runtime)}, candidate
