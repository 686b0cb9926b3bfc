"""The serving runtime: each version's network as an OpenVINO model, int8 by NNCF's post-training
quantization, checked against Keras on the 2,000 held-out images before it serves.

Why OpenVINO int8: the fastest path measured, 6.2x Keras (mixed_bfloat16) at batch 32 on an AMX
Xeon, and 3.3x Keras mixed_bfloat16 (2.6x Keras float32) on an AVX2-only AMD EPYC
(`python -m cifar bench-serving`, RESULTS.md). Keras stays the training format and the fallback:
where OpenVINO is missing, the artifact absent or
its answers drift from Keras', the Keras model serves, and the log and Monitoring say why.

A version's folder holds `openvino/` (model.xml, model.bin, runtime.json). runtime.json keeps the
check: how often the artifact gave Keras' answer, both accuracies, the CPU it ran on, the files'
hashes, and Keras' answers themselves at every test-time level up to the one checked, so a later
check needs no Keras pass (and serving then needs no Keras at all: it is imported only where a
model is converted or run through Keras). Checks run on other CPUs can be recorded beside it
(`checks`, by `record_checks`), so an app on such a CPU starts without running one. Beside an int8
model, `openvino/float/` keeps the float model it was quantized from (weights in float16 on
disk): where int8 fails its check on another CPU (its kernels differ between CPUs), that one is
checked and serves, with no Keras to convert it there.
"""
import hashlib
import json
import logging
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from . import config, cpu, data, tta
from .registry import write_json_atomic

log = logging.getLogger("cifar")

FOLDER = "openvino"
FALLBACK = f"{FOLDER}/float"   # the float model beside an int8 one
FILES = ("model.xml", "model.bin", "runtime.json")
MAX_ACCURACY_DROP = 0.003      # at most this much less accurate than Keras (and config.min_agreement())
QUANTIZATION_IMAGES = 512      # training images NNCF measures the activation ranges on
PRECISIONS = ("int8", "float")  # tried in this order, fastest first; "float" is f32, or bf16 where native
NOT_INSTALLED = {"runtime": "keras", "passed": False, "why": "OpenVINO is not installed (pip install openvino nncf)"}
ISA_CAPPED = {"runtime": "keras", "passed": False,
              "why": "OpenVINO is off: its CPU plugin crashes under ONEDNN_MAX_CPU_ISA, which is set"}


def unavailable() -> dict:
    """Why OpenVINO cannot serve here (available() is None)."""
    return dict(ISA_CAPPED if cpu.isa_capped() else NOT_INSTALLED)


def available() -> str | None:
    """The OpenVINO version, or None when it is not installed or cannot run here."""
    if cpu.isa_capped():  # OpenVINO 2025's CPU plugin crashes (SIGSEGV) under a oneDNN ISA cap
        return None
    try:
        import openvino
    except ImportError:
        return None
    return openvino.__version__


def _cpu_key() -> str:
    """What the check's answers depend on: the CPU, its flags and the precision chosen for it."""
    info = cpu.info()
    return f"{info['model']} [{' '.join(info['flags'])}] {cpu.precision()}"


def _hashes(folder: Path) -> dict:
    return {name: hashlib.sha256((folder / name).read_bytes()).hexdigest() for name in ("model.xml", "model.bin")}


class OpenVINONetwork:
    """A compiled OpenVINO model with the Keras network's call shape: float32 pixels -> logits.
    Not thread-safe (one infer request): the Predictor calls it under its lock."""

    def __init__(self, xml_path: Path, precision: str):
        import openvino  # optional (see `available`): imported where it is used

        self.precision = precision
        settings = {"PERFORMANCE_HINT": "LATENCY"}
        if cpu.precision() == "float32":  # OpenVINO would pick bf16 wherever the CPU lists it; CIFAR_PRECISION rules
            settings["INFERENCE_PRECISION_HINT"] = "f32"
        threads = config.inference_threads()
        if threads:
            settings["INFERENCE_NUM_THREADS"] = threads
        self.compiled = openvino.Core().compile_model(str(xml_path), "CPU", settings)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.compiled(x)[0], dtype=np.float32)


def export(model, folder: Path, precisions=PRECISIONS) -> dict:
    """OpenVINO models of a Keras `model` in `precisions` (float, int8), written in `folder`: {precision: xml}."""
    import keras
    import nncf  # optional, like openvino (see `available`)
    import openvino

    from . import model as net

    float_xml = folder / "float" / "model.xml"
    float_xml.parent.mkdir(parents=True)
    net.to_float32(model).export(str(float_xml), format="openvino", verbose=False,
                                 input_signature=[keras.InputSpec(shape=(None, 32, 32, 3), dtype="float32")])
    if "int8" not in precisions:
        return {"float": float_xml}
    x_train, _ = data.replay(QUANTIZATION_IMAGES, seed=0)
    samples = nncf.Dataset([x_train[i:i + 1].astype(np.float32) for i in range(len(x_train))])
    quantized = nncf.quantize(openvino.Core().read_model(str(float_xml)), samples, subset_size=len(x_train))
    int8_xml = folder / "int8" / "model.xml"
    int8_xml.parent.mkdir()
    openvino.save_model(quantized, str(int8_xml))
    return {"int8": int8_xml, "float": float_xml}


def check(network, x: np.ndarray, labels: np.ndarray, keras_answers: np.ndarray, tta_level: int) -> dict:
    """Serve the held-out images `x` through `network`; compare with Keras' answers and accuracy."""
    answers = tta.logits(network, x, tta_level).argmax(1)
    agreement = float((answers == keras_answers).mean())
    accuracy, keras_accuracy = float((answers == labels).mean()), float((keras_answers == labels).mean())
    return verdict({"agreement": round(agreement, 5), "accuracy": round(accuracy, 5),
                    "keras_accuracy": round(keras_accuracy, 5), "count": len(labels)})


def verdict(result: dict) -> dict:
    """`result` (agreement, accuracy, keras_accuracy) with the rule applied now: passed and why.
    Applied to stored checks as well, so a stricter CIFAR_MIN_AGREEMENT takes effect at start."""
    needed = config.min_agreement()
    passed = result["agreement"] >= needed and result["accuracy"] >= result["keras_accuracy"] - MAX_ACCURACY_DROP
    why = (f"{result['agreement']:.2%} same answers as Keras (needs {needed:.1%}), accuracy {result['accuracy']:.2%} "
           f"vs Keras {result['keras_accuracy']:.2%} (at most {MAX_ACCURACY_DROP * 100:.1f} point less)")
    return {**result, "passed": passed, "why": why}


def build(model, version_folder: Path, tta_level: int, keras_answers: dict[int, np.ndarray] | None = None,
          precisions=PRECISIONS) -> dict:
    """Convert `model` (Keras), check each of `precisions`, and keep the fastest that passes in
    `version_folder`/openvino (and, when that is int8, the float model in openvino/float, unchecked
    until a CPU needs it). `keras_answers`: Keras' on the held-out images by test-time level, at
    least at `tta_level`, if the caller has them (a retrain's judge does), else computed here.
    Returns runtime.json's content."""
    version = available()
    if version is None:
        return unavailable()
    x, labels = data.holdout()
    if keras_answers is None:
        keras_answers = {level: logits.argmax(1) for level, logits in keras_logits_on(model, x, tta_level).items()}
    by_level = {str(level): _encode(answers) for level, answers in sorted(keras_answers.items())}
    report = {"runtime": "openvino", "openvino": version, "tta_level": tta_level, "checked_on": data.HOLDOUT_NAME,
              "cpu": _cpu_key(), "keras_answers": by_level[str(tta_level)], "keras_answers_by_level": by_level,
              "tried": {}}
    target = Path(version_folder) / FOLDER
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as work:
        exported = export(model, Path(work), precisions)
        for precision in precisions:
            xml = exported[precision]
            result = check(OpenVINONetwork(xml, precision), x, labels, keras_answers[tta_level], tta_level)
            report["tried"][precision] = result
            if result["passed"]:
                _copy_model(xml, target)
                report.update(result, precision=precision, sha256=_hashes(target))
                if precision != "float" and "float" in exported:
                    _keep_fallback(exported["float"], Path(version_folder) / FALLBACK, report)
                break
    if not report.get("passed"):
        report.update(runtime="keras", passed=False,
                      why="no OpenVINO model passed the check: " + "; ".join(
                          f"{p}: {r['why']}" for p, r in report["tried"].items()))
    (target / "runtime.json").write_text(json.dumps(report, indent=1))
    log.info("serving runtime for %s: %s", Path(version_folder).name, describe(report))
    return report


def _copy_model(xml: Path, target: Path) -> None:
    for suffix in (".xml", ".bin"):
        shutil.copy2(xml.with_suffix(suffix), target / f"model{suffix}")


def _keep_fallback(float_xml: Path, target: Path, report: dict) -> None:
    """The float model beside an int8 one, its weights stored in float16 (half the size; it computes
    in float32 or bf16 as any float model), with the Keras answers to check it against."""
    import openvino

    target.mkdir(parents=True, exist_ok=True)
    openvino.save_model(openvino.Core().read_model(str(float_xml)), str(target / "model.xml"), compress_to_fp16=True)
    unchecked = {k: report[k] for k in ("openvino", "tta_level", "checked_on", "count", "keras_answers",
                                        "keras_answers_by_level") if k in report}
    (target / "runtime.json").write_text(json.dumps(
        {**unchecked, "runtime": "openvino", "precision": "float", "passed": None, "sha256": _hashes(target),
         "why": "kept for CPUs where the int8 model fails its check; checked where it is used"}, indent=1))


def add_fallback(keras_model: Callable, version_folder: Path) -> bool:
    """Keep the float model beside a version's int8 one, if it has none (versions made before
    build kept it; `record_checks`' maintainers only). Returns whether one was added."""
    folder = Path(version_folder)
    try:
        stored = json.loads((folder / FOLDER / "runtime.json").read_text())
    except (OSError, ValueError):
        return False
    if stored.get("precision") != "int8" or (folder / FALLBACK / "runtime.json").exists():
        return False
    with tempfile.TemporaryDirectory() as work:
        _keep_fallback(export(keras_model(), Path(work), ("float",))["float"], folder / FALLBACK, stored)
    return True


def _encode(answers: np.ndarray) -> str:
    return "".join(map(str, np.asarray(answers).tolist()))


def keras_logits_on(model, x: np.ndarray, tta_level: int) -> dict[int, np.ndarray]:
    """The Keras model's logits for each image of `x` at `tta_level` and every level below it (one pass)."""
    from . import model as net

    return tta.logits_by_level(net.keras_network(model), x, tta_level)


def stored_keras_answers(version_folder: Path, tta_level: int) -> np.ndarray | None:
    """Keras' answers on the held-out images at `tta_level`, as stored by `build`, or None."""
    try:
        stored = json.loads((Path(version_folder) / FOLDER / "runtime.json").read_text())
    except (OSError, ValueError):
        return None
    return _answers_in(stored, tta_level, len(data.holdout()[1]))


def _answers_in(stored: dict, tta_level: int, count: int) -> np.ndarray | None:
    """The Keras answers in a runtime.json's content, if stored at `tta_level` for `count` images."""
    answers = stored.get("keras_answers_by_level", {}).get(str(tta_level))
    if answers is None and stored.get("tta_level") == tta_level:  # versions made before answers by level
        answers = stored.get("keras_answers")
    if answers is None or len(answers) != count:
        return None
    return np.array([int(c) for c in answers])


def not_converted() -> dict:
    """The runtime of a version saved without a conversion (a retrain's turned-down version):
    Keras until it serves somewhere, where cifar.serving.load_predictor makes and checks one."""
    return {"runtime": "keras", "why": "not converted yet (it has not served; converted where it first serves)"}


def describe(status: dict) -> str:
    """One line for the log and Monitoring."""
    if status.get("runtime") == "openvino" and status.get("passed"):
        return (f"OpenVINO {status['precision']} ({status['agreement']:.2%} same answers as Keras on "
                f"{status['count']:,} held-out images, accuracy {status['accuracy']:.2%} vs {status['keras_accuracy']:.2%})"
                + (f"; {status['replaced']}" if status.get("replaced") else ""))
    return f"Keras: {status.get('why', 'no OpenVINO model')}"


def check_label(tta_level: int) -> str:
    """Where a recorded check ran: this CPU (model, flags, precision) and the test-time level."""
    return f"{_cpu_key()} | level {tta_level}"


def load(folder: Path, keras_model: Callable, tta_level: int, cache_dir=None,
         keras_answers: Callable[[], np.ndarray] | None = None, sub: str = FOLDER) -> tuple[OpenVINONetwork | None, dict]:
    """The checked OpenVINO network in `folder`/openvino, or (None, why) for Keras to serve.
    `keras_model()`: the Keras model it was made from, served at `tta_level` (called only when a
    check must be rerun without stored answers, or a float model made here). `keras_answers`: its
    Keras answers on the held-out images at that level, from a pass the caller shares (else made here).

    The check stands without a rerun when the files are the ones checked on this CPU at this
    level (their hashes, the CPU model and flags: at conversion, or recorded since in `checks`);
    otherwise the artifact serves the held-out images again and is compared with the Keras
    answers stored at conversion (a Keras pass only where none are stored at this level). Reruns
    are cached in `cache_dir`, since a version's folder never changes. Where int8 fails, the float
    model beside it (`sub`=FALLBACK) is checked the same way, else one is made here from Keras."""
    target = Path(folder) / sub
    try:
        stored = json.loads((target / "runtime.json").read_text())
    except (OSError, ValueError):
        return None, {"runtime": "keras", "passed": False, "why": "this version has no OpenVINO model"}
    if stored.get("passed") is False:  # None: a fallback not checked anywhere yet
        return None, stored
    if available() is None:
        return None, unavailable()
    summary = {k: v for k, v in stored.items() if k not in ("keras_answers", "keras_answers_by_level", "checks")}
    try:
        network = OpenVINONetwork(target / "model.xml", stored["precision"])
        hashes = _hashes(target)
    except Exception as exc:  # a missing or unreadable file: the float model beside it, else Keras
        unreadable = {**summary, "runtime": "keras", "passed": False,
                      "why": f"the OpenVINO model could not be loaded ({exc.__class__.__name__})"}
        return _fallback(folder, sub, keras_model, tta_level, cache_dir, keras_answers, unreadable["why"]) or (None, unreadable)
    level = tta_level
    answers = _answers_in(stored, level, stored.get("count"))  # no held-out images to load at start

    def keras_pass() -> np.ndarray:  # Keras' answers at this level: the caller's shared pass, else one here
        return keras_answers() if keras_answers else keras_logits_on(keras_model(), data.holdout()[0], level)[level].argmax(1)

    unchanged = hashes == stored.get("sha256")
    recorded = stored.get("checks", {}).get(check_label(level)) if unchanged else None
    key = hashlib.sha256(json.dumps([hashes, _cpu_key(), level]).encode()).hexdigest()[:16]
    if unchanged and stored.get("cpu") == _cpu_key() and stored.get("tta_level") == level:
        status = {**summary, **verdict(stored)}  # checked on this CPU: its numbers stand, the rule is today's
    elif recorded:
        status = {**summary, **verdict(recorded), "tta_level": level}
        status["why"] = status["why"] if not status["passed"] else "checked on this CPU (recorded with the version)"
    else:
        cached = Path(cache_dir) / f"runtime-check-{key}.json" if cache_dir else None
        if cached is not None and cached.exists():
            result = verdict(json.loads(cached.read_text()))
        else:
            x, labels = data.holdout()
            answers = keras_pass() if answers is None else answers
            result = check(network, x, labels, answers, level)
            if cached:
                write_json_atomic(cached, result)
        status = {**summary, **result, "tta_level": level,
                  "why": result["why"] if not result["passed"] else "checked again on this CPU"}
    if status["passed"]:
        return network, status
    failed = f"the OpenVINO {stored['precision']} model failed its check on this machine: {status['why']}"
    served = _fallback(folder, sub, keras_model, level, cache_dir, keras_answers, failed)
    if served and served[0] is not None:
        return served
    if served:
        failed = served[1]["why"]
    if cache_dir and sub == FOLDER:  # int8 kernels differ between CPUs; a float model made here from Keras
        # agrees with it (made once, after the float model beside it failed too: not again inside that one's check)
        return _float_made_here(keras_model, Path(cache_dir) / f"runtime-float-{key}", level,
                                keras_pass if answers is None else lambda: answers, failed)
    return None, {**status, "runtime": "keras", "why": failed}


def _fallback(folder: Path, sub: str, keras_model: Callable, level: int, cache_dir, keras_answers, failed: str):
    """The float model kept beside a version's int8 one, when that one cannot serve here (`failed`
    says why): (network, status) if it passes its own check, (None, status saying both) if not,
    None where there is none."""
    if sub != FOLDER or not (Path(folder) / FALLBACK / "runtime.json").exists():
        return None
    network, status = load(folder, keras_model, level, cache_dir, keras_answers, sub=FALLBACK)
    if network is not None:
        return network, {**status, "replaced": failed}
    return None, {**status, "runtime": "keras", "why": f"{failed}; the float model beside it too: {status.get('why', '')}"}


def record_checks(version_folder: Path, keras_logits: Callable[[], dict[int, np.ndarray]], levels=tta.LEVELS) -> dict:
    """Check a version's OpenVINO models (its own and the float one beside it) on this CPU at each
    of `levels` and record the results in their runtime.json (`checks`), so an app on this kind of
    CPU starts without checking them. Keras' answers at levels the version lacks come from
    `keras_logits()` (its logits on the held-out images by level, one pass) and are stored too.
    For a maintainer preparing a shipped version; the app itself never changes a version.
    Returns {sub-folder: {level: result}}."""
    x, labels = data.holdout()
    made = {}
    recorded = {}
    for sub in (FOLDER, FALLBACK):
        path = Path(version_folder) / sub / "runtime.json"
        if not path.exists():
            continue
        stored = json.loads(path.read_text())
        if stored.get("passed") is False:
            continue
        network = OpenVINONetwork(path.parent / "model.xml", stored["precision"])
        by_level = stored.setdefault("keras_answers_by_level", {})
        if stored.get("keras_answers") and str(stored["tta_level"]) not in by_level:
            by_level[str(stored["tta_level"])] = stored["keras_answers"]
        recorded[sub] = {}
        for level in levels:
            answers = _answers_in(stored, level, len(labels))
            if answers is None:
                made = made or {lvl: logits.argmax(1) for lvl, logits in keras_logits().items()}
                answers = made[level]
                by_level[str(level)] = _encode(answers)
            result = check(network, x, labels, answers, level)
            stored.setdefault("checks", {})[check_label(level)] = {
                k: result[k] for k in ("agreement", "accuracy", "keras_accuracy", "count")}
            recorded[sub][level] = result
        write_json_atomic(path, stored)
    return recorded


def _float_made_here(keras_model: Callable, folder: Path, level: int, keras_answers: Callable[[], np.ndarray],
                     failed: str):
    """When the version's own OpenVINO model fails its check on this CPU: a float one made from
    the Keras model, checked like any other (made once, kept in the cache)."""
    if not (folder / FOLDER / "runtime.json").exists():
        build(keras_model(), folder, level, {level: keras_answers()}, precisions=("float",))
    network, status = load(folder, keras_model, level)
    if network is None:
        return None, {**status, "runtime": "keras", "why": f"{failed}; {status.get('why', '')}"}
    return network, {**status, "replaced": failed}
