"""Model versions on disk: save, list, promote, rollback. Every change is atomic.

Layout under the registry root:
    versions/<id>/model.keras, metadata.json, metrics.json, history.json, calibration.json, README.md
    state.json            {"current": id, "promotions": [[utc, id, reason], ...]}
A version folder is written under a temporary name and renamed into place in one step, and
state.json is replaced with os.replace, so a process killed at any moment leaves either the
old or the new state, never a half-written one. Versions are never overwritten or deleted.
"""
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from . import CLASSES

MODEL_FILE = "model.keras"


class RegistryError(ValueError):
    """An unknown version, a duplicate id, or an empty registry; the message says which."""


def utc_now() -> datetime:
    return datetime.now(UTC)


def new_version_id(kind: str, when: datetime | None = None) -> str:
    """`20261126T163005Z-scratch`: sortable, starts with the UTC time, valid as a git tag."""
    return f"{(when or utc_now()).strftime('%Y%m%dT%H%M%SZ')}-{kind}"


def write_json_atomic(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as handle:
        json.dump(data, handle, indent=2, default=str)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


@dataclass
class Version:
    id: str
    path: Path

    @classmethod
    def at(cls, path) -> "Version":
        """The version in a folder (or the folder of its model.keras), outside any registry."""
        folder = Path(path)
        folder = folder.parent if folder.suffix == ".keras" else folder
        return cls(folder.name, folder)

    def training_distribution(self) -> dict[str, int]:
        """Images per class the version was trained on (an even split where its metadata has only the total)."""
        per_class = self.metadata.get("train_count_per_class")
        if per_class:
            return per_class
        count = self.metadata.get("train_count", 0)
        return {c: count // len(CLASSES) for c in CLASSES}

    @property
    def model_path(self) -> Path:
        return self.path / MODEL_FILE

    def read(self, name: str) -> dict:
        file = self.path / f"{name}.json"
        return json.loads(file.read_text()) if file.exists() else {}

    @property
    def metadata(self) -> dict:
        return self.read("metadata")

    @property
    def metrics(self) -> dict:
        return self.read("metrics")

    @property
    def history(self) -> dict:
        return self.read("history")

    @property
    def calibration(self) -> dict:
        """Temperature and held-out reference (cifar.learning.calibration), {} if never fitted."""
        return self.read("calibration")


class Registry:
    def __init__(self, root):
        self.root = Path(root)
        self.versions_dir = self.root / "versions"
        self.state_file = self.root / "state.json"
        self.versions_dir.mkdir(parents=True, exist_ok=True)

    # --- reading ---------------------------------------------------------------------------
    def _state(self) -> dict:
        if self.state_file.exists():
            return json.loads(self.state_file.read_text())
        return {"current": None, "promotions": []}

    def list(self) -> list[Version]:
        """All complete versions, oldest first (ids sort by time)."""
        return [Version(p.name, p) for p in sorted(self.versions_dir.iterdir())
                if p.is_dir() and not p.name.startswith(".") and (p / MODEL_FILE).exists()]

    def get(self, version_id: str) -> Version:
        path = self.versions_dir / version_id
        if "/" in version_id or version_id.startswith(".") or not (path / MODEL_FILE).exists():
            raise RegistryError(f"no version {version_id!r}; known: {', '.join(v.id for v in self.list()) or 'none'}")
        return Version(version_id, path)

    def current(self) -> Version:
        """The version serving predictions; the newest one if none was promoted yet."""
        current_id = self._state().get("current")
        if current_id and (self.versions_dir / current_id / MODEL_FILE).exists():
            return Version(current_id, self.versions_dir / current_id)
        versions = self.list()
        if not versions:
            raise RegistryError(f"no model versions in {self.root}")
        return versions[-1]

    def promotions(self) -> list:
        return self._state()["promotions"]

    # --- writing ---------------------------------------------------------------------------
    def save(self, version_id: str, write_files) -> Version:
        """Create version `version_id`: `write_files(folder)` fills a temporary folder, which
        is then renamed into place. Refuses an id that exists (versions are never overwritten)."""
        final = self.versions_dir / version_id
        if final.exists():
            raise RegistryError(f"version {version_id} exists already; versions are never overwritten")
        staging = Path(tempfile.mkdtemp(dir=self.versions_dir, prefix=f".staging-{version_id}-"))
        try:
            write_files(staging)
            for file in (f for f in staging.rglob("*") if f.is_file()):
                with open(file, "rb") as handle:
                    os.fsync(handle.fileno())
            staging.chmod(0o755)  # mkdtemp makes it private
            os.rename(staging, final)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
        return Version(version_id, final)

    def add_folder(self, folder: Path, version_id: str | None = None) -> Version:
        """Copy a complete version folder (shipped, pulled from the Hub) into the registry."""
        version_id = version_id or Path(folder).name
        if (self.versions_dir / version_id / MODEL_FILE).exists():
            return self.get(version_id)
        return self.save(version_id, lambda dest: shutil.copytree(  # not the Hub client's .cache
            folder, dest, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".*")))

    def promote(self, version_id: str, reason: str = "promoted by hand") -> Version:
        version = self.get(version_id)
        state = self._state()
        state["current"] = version.id
        state["promotions"].append([utc_now().isoformat(timespec="seconds"), version.id, reason])
        write_json_atomic(self.state_file, state)
        return version

    def rollback(self, version_id: str | None = None) -> Version:
        """Make `version_id` current; without one, the version that was current before this one."""
        if version_id is None:
            current = self.current().id
            earlier = [p[1] for p in self.promotions() if p[1] != current]
            if not earlier:
                raise RegistryError("nothing to roll back to: no earlier current version")
            version_id = earlier[-1]
        return self.promote(version_id, reason="rollback")

    def seed_from(self, shipped_root) -> None:
        """An empty registry (a fresh CIFAR_HOME) gets the versions shipped with the code, and the
        shipped current one is made current; the app and the command line both start this way.

        Raises:
            RegistryError: nothing to seed from.
        """
        if self.list():
            return
        shipped = Registry(shipped_root)
        for version in shipped.list():
            self.add_folder(version.path)
        if not self.list():
            raise RegistryError(f"no model versions shipped in {shipped_root}")
        self.promote(shipped.current().id, reason="shipped model")

    def clean_staging(self) -> None:
        """Remove folders left by a process killed while saving (they were never versions)."""
        for path in self.versions_dir.glob(".staging-*"):
            shutil.rmtree(path, ignore_errors=True)
