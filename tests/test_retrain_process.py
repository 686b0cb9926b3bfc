"""The app's retrain in a process of its own (cifar.retrain_process): what goes wrong there reaches
the caller by name, and nothing is left running. The full path (progress, a saved and promoted
version served by the app, niceness, no orphan after a SIGKILL) runs in test_faults, test_promotion
and test_retrain_shift through the real app."""
import pytest

from cifar import retrain_process


def test_a_failure_in_the_retrains_process_reaches_the_caller_by_name(tmp_path, monkeypatch):
    monkeypatch.setenv("CIFAR_HOME", str(tmp_path / "home"))
    phases = []
    with pytest.raises(retrain_process.RetrainFailed, match=r"RegistryError: no version 'nope'"):
        retrain_process.run("nope", 0, {"threshold": 0.98, "epochs": None}, lambda f, phase: phases.append(phase))
    assert phases == []  # it failed before any work began


def test_a_process_the_retrain_forks_can_close_its_stdin_and_exit():
    """OpenVINO's telemetry forks a process during each conversion; the child's watch on its stdin
    (the app's end-of-file) must not hold a lock the fork inherits, or that process hangs forever."""
    import subprocess
    import sys

    script = ("import multiprocessing, threading, time\n"
              "from cifar.retrain_process import _stop_when_parent_goes\n"
              "threading.Thread(target=_stop_when_parent_goes, daemon=True).start()\n"
              "time.sleep(0.5)  # the watch is blocked reading stdin\n"
              "forked = multiprocessing.get_context('fork').Process(target=time.sleep, args=(0,))  # closes its stdin first\n"
              "forked.start(); forked.join(20)\n"
              "print('forked exit', forked.exitcode, flush=True)\n"
              "forked.kill(); time.sleep(60)  # until the watch sees end-of-file\n")
    watcher = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        line = watcher.stdout.readline()
        assert line.strip() == "forked exit 0", line
    finally:
        watcher.stdin.close()  # end-of-file: the watch ends the process
        assert watcher.wait(timeout=30) == 3
