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
