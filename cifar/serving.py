"""The serving loader: a registry version -> its calibrated Predictor on its checked runtime.

Also what the app needs before it serves: the registry seeded (shipped versions, or the Hub's
newest at start), and a version's held-out metrics as the retrain's judge measured them.
"""
import functools
import json
import logging
from pathlib import Path

from . import config, data, evaluate, hub, runtime
from .learning import calibration
from .predict import Predictor
from .registry import Registry, Version, write_json_atomic

log = logging.getLogger("cifar")


def seed_registry(registry: Registry) -> None:
    """First start: copy the shipped versions in, or pull the newest pushed one when
    CIFAR_FROM_HUB is set (falling back to the shipped model when the Hub cannot be reached)."""
    if config.start_from_hub() and config.hub_repo_id():
        try:
            version = hub.pull(registry, None)
            registry.promote(version.id, reason="pulled from the Hub at start")
            return
        except hub.HubError as exc:
            log.warning("starting from the shipped model: %s", exc)
    registry.seed_from(config.shipped_models_dir())


def load_predictor(version: Version, tta_level: int, cache_dir: Path | None = None) -> Predictor:
    """A registry version with its calibration (fitted now if it never was), served by its
    OpenVINO model when that passed its check (made now, into the cache, if it has none)."""
    predictor = Predictor.load(version.model_path, version=version.id, tta_level=tta_level)
    # Where the version's stored calibration and check are at another level (an AVX2-only CPU
    # serves flip only), or it has no OpenVINO model yet, each needs Keras' logits on the held-out
    # images: one pass, shared.
    by_level = functools.cache(lambda: runtime.keras_logits_on(predictor.model, data.holdout()[0], tta_level))
    keras_logits = lambda: by_level()[tta_level]
    keras_answers = lambda: keras_logits().argmax(1)  # the same pass, as answers
    predictor.calibrate(calibration.for_version(version, tta_level, cache_dir, keras_logits))
    folder = version.path
    # Older versions and turned-down ones have none: made into the cache (versions never change)
    if not (folder / runtime.FOLDER).exists() and cache_dir:
        folder = Path(cache_dir) / f"runtime-{version.id}"
        if not (folder / runtime.FOLDER / "runtime.json").exists():
            runtime.build(predictor.model, folder, tta_level, {level: v.argmax(1) for level, v in by_level().items()})
    predictor.use_runtime(folder, cache_dir, keras_answers=keras_answers)
    return predictor


def holdout_metrics(version: Version, predictor: Predictor, cache_dir: Path) -> dict:
    """Keras' metrics of `version` (served by `predictor`) on the shipped held-out images, as a
    retrain's judge measures a new version: from the answers its runtime check stored, else
    measured; cached (versions never change)."""
    cached = cache_dir / f"holdout-{version.id}.json"
    if cached.exists():
        return json.loads(cached.read_text())
    x, y = data.holdout()
    answers = runtime.stored_keras_answers(version.path, predictor.tta_level)
    metrics = (evaluate.compute_metrics(y, answers) if answers is not None
               else evaluate.evaluate(predictor, x, y))
    write_json_atomic(cached, metrics)
    return metrics
