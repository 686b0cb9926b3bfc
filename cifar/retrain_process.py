"""The app's retrain in a process of its own, so serving keeps its interpreter.

A retrain in a thread of the serving process shares that process's GIL: Keras' training loop
and the NumPy between network calls hold it while Gradio's event loop waits, and no thread
priority can hand it back (RESULTS.md, "a retrain while the API is busy"). Here the retrain runs
as `python -m cifar.retrain_process`, at niceness TRAINING_NICENESS for all its threads, on the
same CIFAR_HOME: it loads the version it was given, runs `cifar.learning.retrain.run` (the same
code the command line runs in-process), saves the new version into the registry on disk (and
promotes it there when the rule lets it); the app then loads that version and serves it.

The two talk in JSON lines: the request on the child's stdin (kept open: when the app dies, the
child sees end-of-file and stops, so no orphan saves a version nobody waits for), progress and
the outcome on the child's stdout; anything else the child prints goes to its stderr, the app's log.
"""
import json
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from . import config, cpu, serving
from .registry import Registry
from .retrain_rules import NothingToLearn
from .uploads import UploadStore

log = logging.getLogger("cifar")


class RetrainFailed(RuntimeError):
    """The retrain's process failed for a reason that is not the user's; the message says which."""


def run(version_id: str, tta_level: int, params: dict, report) -> dict:
    """Retrain `version_id` in a child process; `report(fraction, phase)` hears its progress.
    Returns the result of `cifar.learning.retrain.run` (the new version saved, and promoted in
    the registry when the rule lets it).

    Raises:
        NothingToLearn: the uploads give it nothing to learn (the user's to fix).
        RetrainFailed: anything else; the child's log has the details.
    """
    request = {"version": version_id, "tta_level": tta_level, "threshold": params["threshold"],
               "epochs": params["epochs"], "started": time.time()}  # the budget counts the process's start
    # The package's folder on the path: the app may have been started from anywhere.
    path = os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH")]))
    child = subprocess.Popen([sys.executable, "-m", "cifar.retrain_process"], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True, bufsize=1, env={**os.environ, "PYTHONPATH": path})
    log.info("retrain running in process %d", child.pid)
    outcome = None
    try:
        child.stdin.write(json.dumps(request) + "\n")
        child.stdin.flush()
        for line in child.stdout:
            message = json.loads(line)
            if "progress" in message:
                report(message["progress"], message["phase"])
            else:
                outcome = message
                break
    finally:
        child.stdin.close()  # the child's cue to stop, if it has not
        code = child.wait()
    if outcome is None:
        raise RetrainFailed(f"the retrain's process exited with code {code} before it finished")
    if "result" in outcome:
        return outcome["result"]
    if outcome.get("nothing_to_learn"):
        raise NothingToLearn(outcome["error"])
    raise RetrainFailed(outcome["error"])


def _stop_when_parent_goes() -> None:
    """The app holds our stdin open while it waits for us; end-of-file means it is gone.

    Reads the raw descriptor, not `sys.stdin`: a thread blocked in `sys.stdin.read()` holds that
    object's lock, and a process forked meanwhile (OpenVINO's telemetry forks one to send each
    conversion's event) deadlocked closing its copy of stdin and outlived us, 1.3 GB each."""
    while os.read(0, 4096):
        pass
    os._exit(3)


def main() -> None:
    channel = os.fdopen(os.dup(1), "w", buffering=1)  # only our messages go to the app ...
    os.dup2(2, 1)  # ... anything else printed (TensorFlow, Keras) goes to the log
    os.nice(cpu.TRAINING_NICENESS)  # before any thread exists: every thread made later inherits it
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s retrain[%(process)d]: %(message)s")
    request = json.loads(sys.stdin.readline())
    threading.Thread(target=_stop_when_parent_goes, daemon=True).start()

    def send(message: dict) -> None:
        channel.write(json.dumps(message) + "\n")

    from .learning import retrain as learning_retrain  # Keras: loaded in the retrain's process only

    try:
        registry, uploads = Registry(config.registry_dir()), UploadStore(config.uploads_dir())
        current = registry.get(request["version"])
        predictor = serving.load_predictor(current, request["tta_level"], config.cache_dir())
        before = serving.holdout_metrics(current, predictor, config.cache_dir())
        result, _ = learning_retrain.run(registry, uploads, predictor, before, request["threshold"],
                                         request["epochs"], lambda f, phase: send({"progress": f, "phase": phase}),
                                         started=request["started"])
    except NothingToLearn as exc:
        send({"error": str(exc), "nothing_to_learn": True})
    except Exception as exc:  # the app shows one line; the traceback goes to the log
        log.exception("retrain failed")
        send({"error": f"{exc.__class__.__name__}: {exc}"})
    else:
        send({"result": result})


if __name__ == "__main__":
    main()
