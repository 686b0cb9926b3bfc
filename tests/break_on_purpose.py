"""Break the product on purpose, one change at a time, and show which tests catch it.

    python tests/break_on_purpose.py          # ~10 minutes on 2 cores

Each change is made in a throwaway git worktree of HEAD (this checkout is never touched), the tests
that should notice run there, and the change is undone before the next. A change no test catches
is a hole in the suite.
"""
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cifar import config  # noqa: E402

# (what breaks, file, the line as it is, the line broken, the tests to run)
CHANGES = [
    ("the promotion rule inverted", "cifar/learning/retrain.py",
     'promoted = after["accuracy"] >= before["accuracy"] - PROMOTION_TOLERANCE',
     'promoted = not (after["accuracy"] >= before["accuracy"] - PROMOTION_TOLERANCE)',
     ["tests/test_retrain_shift.py", "tests/test_promotion.py", "tests/test_turned_down.py"]),
    ("the admin key check removed from /label", "cifar/service.py",
     '        label wins; every earlier one stays in the history."""\n        self.check_admin(key)\n',
     '        label wins; every earlier one stays in the history."""\n',
     ["tests/test_secrets.py"]),
    ("the upload store's dedupe removed", "cifar/uploads.py",
     "                if digest in known:\n", "                if False:\n",
     ["tests/test_app_api.py", "tests/test_uploads.py"]),
    ("calibration's temperature set to 1", "cifar/learning/calibration.py",
     '    so a few hundred images fit it without overfitting)."""\n',
     '    so a few hundred images fit it without overfitting)."""\n    return 1.0\n',
     ["tests/test_learning.py"]),
    ("the Hub push skipping the card", "cifar/hub.py",
     '    (folder / "README.md").write_text(card.model_card(',
     '    0 and (folder / "README.md").write_text(card.model_card(',
     ["tests/test_hub.py", "tests/test_cli.py"]),
]


def main() -> int:
    holes = 0
    with tempfile.TemporaryDirectory() as work:
        tree = Path(work) / "tree"
        subprocess.run(["git", "worktree", "add", "--detach", str(tree), "HEAD"], cwd=ROOT, check=True,
                       capture_output=True)
        try:
            for name, path, line, broken, tests in CHANGES:
                file = tree / path
                text = file.read_text()
                if text.count(line) != 1:
                    print(f"{name}: the line to change is not in {path} once; update this script")
                    holes += 1
                    continue
                file.write_text(text.replace(line, broken))
                try:
                    # The worktree has no ../shared beside it: the tests read this checkout's data.
                    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfE",
                                          *tests], cwd=tree, capture_output=True, text=True, timeout=1800,
                                         env={**os.environ, "CIFAR_DATA": str(config.dataset_dir())})
                finally:
                    file.write_text(text)
                caught = [row.split(" - ")[0].removeprefix("FAILED ") for row in run.stdout.splitlines()
                          if row.startswith("FAILED")]
                errors = [row.split(" - ")[0].removeprefix("ERROR ") for row in run.stdout.splitlines()
                          if row.startswith("ERROR")]  # could not run (no data, a broken fixture): no catch
                holes += not caught
                print(f"{name}: {'caught by ' + ', '.join(caught) if caught else 'NOT CAUGHT'}"
                      + (f" (errors, not catches: {', '.join(errors)})" if errors else ""), flush=True)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, capture_output=True)
    return 1 if holes else 0


if __name__ == "__main__":
    sys.exit(main())
