"""Turning a trained Keras model into a complete registry version (model, metadata, metrics, card)."""
import json
import os
import platform
import shutil
import sys
from pathlib import Path

import keras
import numpy
import sklearn
import tensorflow

from . import card, cpu, evaluate, registry, runtime


def library_versions() -> dict:
    return {"python": platform.python_version(), "keras": keras.__version__,
            "tensorflow": tensorflow.__version__, "numpy": numpy.__version__, "scikit-learn": sklearn.__version__}


def shell_command() -> str:
    """The command line as typed: `python -m cifar ...` rather than the module's file path."""
    program = "python -m cifar" if sys.argv[0].endswith("__main__.py") else f"python {sys.argv[0]}"
    return " ".join([program, *sys.argv[1:]])


def machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} cores, {platform.processor() or platform.system()}"


def save_model_version(reg: registry.Registry, kind: str, model, metadata: dict, metrics: dict,
                       history: dict, calibration: dict | None = None,
                       built_runtime: Path | None = None, convert: bool = True) -> registry.Version:
    """Write model.keras, metadata.json (with file size), metrics.json, history.json,
    calibration.json (cifar.learning.calibration.fit), the card, and the serving runtime's
    checked OpenVINO model (cifar.runtime; `built_runtime`: a folder where runtime.build already
    made it for this model, copied instead of made again; `convert` False: none now, the version
    gets one where it first serves)."""
    version_id = registry.new_version_id(kind)
    metadata = {"id": version_id, "kind": kind, "created": registry.utc_now().isoformat(timespec="seconds"),
                "command": shell_command(), "libraries": library_versions(), "machine": machine(),
                "cpu": cpu.info(), "precision": cpu.precision(), **metadata}

    # A fresh copy without the optimizer: a third of the size (no momentum or EMA slots).
    serving_model = keras.Model.from_config(model.get_config())
    serving_model.set_weights(model.get_weights())

    def write(folder: Path):
        serving_model.save(folder / registry.MODEL_FILE)
        if not convert:
            status = runtime.not_converted()
        elif built_runtime is not None and (Path(built_runtime) / runtime.FOLDER).is_dir():  # none without OpenVINO
            shutil.copytree(Path(built_runtime) / runtime.FOLDER, folder / runtime.FOLDER)
            status = json.loads((folder / runtime.FOLDER / "runtime.json").read_text())
        else:
            status = runtime.build(serving_model, folder, metrics.get("tta_level", cpu.tta_level()))
        metadata["runtime"] = {k: v for k, v in status.items() if k not in ("keras_answers", "keras_answers_by_level")}
        metadata["file_size_bytes"] = (folder / registry.MODEL_FILE).stat().st_size
        for name, data in (("metadata", metadata), ("metrics", metrics), ("history", history),
                           ("calibration", calibration)):
            if data is not None:
                (folder / f"{name}.json").write_text(json.dumps(data, indent=2, default=str))
        (folder / "README.md").write_text(card.model_card(version_id, metadata, metrics, calibration))
        if metrics.get("confusion_matrix"):
            evaluate.save_png(evaluate.plot_confusion(metrics), folder / "confusion.png")
        if history.get("loss"):
            evaluate.save_png(evaluate.plot_history(history), folder / "history.png")

    return reg.save(version_id, write)
