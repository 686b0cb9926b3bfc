"""bench-corruptions, CI-sized (--quick: 3 corruptions at severity 5 on 200 test images): the
corruptions come from the library and hurt, the table and plot are written, the published column
is where it belongs, and the estimate is a number for every cell."""
import json
import subprocess
import sys

import numpy as np
from conftest import ROOT

from cifar import corruptions, data


def test_a_corruption_is_reproducible_and_changes_the_pictures():
    x, _ = data.load_npz(data.replay_path())
    once = corruptions.corrupt(x[:20], "gaussian_noise", 5, seed=1)
    assert once.shape == x[:20].shape and once.dtype == np.uint8
    assert np.array_equal(once, corruptions.corrupt(x[:20], "gaussian_noise", 5, seed=1))
    assert np.abs(once.astype(int) - x[:20]).mean() > 20  # severity 5 noise: far from the original


def test_quick_run_writes_the_table_and_the_plot(tmp_path):
    run = subprocess.run([sys.executable, "-m", "cifar", "bench-corruptions", "--quick", "--out", str(tmp_path)],
                         cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    rows = {(r["corruption"], r["severity"]): r for r in json.loads((tmp_path / "corruptions.json").read_text())["rows"]}
    assert set(rows) == {("clean", 0), ("gaussian_noise", 5), ("pixelate", 5), ("saturate", 5),
                         ("label shift: 1 class", 0), ("label shift: 2 classes", 0), ("label shift: 5 classes", 0)}
    assert rows["gaussian_noise", 5]["accuracy"] < rows["clean", 0]["accuracy"] - 0.2  # the noise hurts
    assert all(0 <= r["estimate"] <= 1 and 0 <= r["adapted_accuracy"] <= 1 for r in rows.values())
    table = (tmp_path / "corruptions.md").read_text()
    assert "| gaussian_noise | 5 |" in table and "| 72.3% | 28.1% |" in table  # Tent's source and norm columns
    assert "| saturate (held out) | 5 |" in table and "Estimate on the 4 held out" in table
    assert "| the lower of agreement and COT, or ATC where it is within 5 points of the reference (the app's) |" in table
    assert "| ATC alone |" in table and "| the adapted copy's agreement alone |" in table and "| COT alone |" in table
    for r in rows.values():
        if r["severity"]:  # shifted: the lower of the adapted copy's agreement and COT, not ATC
            assert r["estimate"] == min(r["agreement"], r["transport"]) != r["atc"]
    one_class = rows["label shift: 1 class", 0]   # 200 clean airplanes: the adapted copy's assumption fails, ATC holds
    assert one_class["estimate"] == one_class["atc"] and abs(one_class["atc"] - one_class["accuracy"]) < 0.1
    assert one_class["agreement"] < one_class["accuracy"] - 0.3
    assert (tmp_path / "corruptions.png").stat().st_size > 10_000
