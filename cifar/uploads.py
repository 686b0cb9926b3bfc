"""The upload store: user images, validated and kept as 32x32 PNGs under CIFAR_HOME/uploads.

Only decoded, re-encoded pixels are stored (never the user's bytes or file names as paths), so
nothing a user sends can be written outside the store or served back as-is. Each accepted
image is a line in an append-only manifest; a line is written only after its PNG is in place.
"""
import hashlib
import io
import json
import os
import re
import threading
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image

from . import CLASSES, images

MAX_IMAGES = 1000                      # per upload
MAX_ZIP_BYTES = 200 * 1024 * 1024      # uncompressed total of one zip
MAX_RATIO = 200                        # compression ratio above which an entry is a bomb
_LABEL_PREFIX = re.compile(rf"^({'|'.join(CLASSES)})(?:[_\-. ]|\d)", re.IGNORECASE)


@dataclass
class Rejection:
    file: str
    reason: str


@dataclass
class UploadReport:
    accepted: int = 0
    labeled: int = 0
    duplicates: int = 0
    rejected: list[Rejection] = field(default_factory=list)
    batch: str = ""
    probabilities: np.ndarray | None = None  # the model's view of each accepted image, (accepted, 10)


def label_from_name(name: str) -> int | None:
    """A class-named folder (`dog/x.png`) or a class-name prefix (`dog_12.jpg`) labels an image."""
    parts = PurePosixPath(name.replace("\\", "/")).parts
    for folder in reversed(parts[:-1]):
        if folder.lower() in CLASSES:
            return CLASSES.index(folder.lower())
    match = _LABEL_PREFIX.match(parts[-1]) if parts else None
    return CLASSES.index(match.group(1).lower()) if match else None


def _unsafe(name: str) -> bool:
    path = name.replace("\\", "/")
    return path.startswith("/") or re.match(r"^[a-zA-Z]:", path) is not None or ".." in PurePosixPath(path).parts


def _zip_entries(path: Path, report: UploadReport):
    """Yield (name, bytes) of a zip's files, rejecting unsafe, nested, oversized and bomb entries."""
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError):
        report.rejected.append(Rejection(path.name, "corrupt zip file"))
        return
    with archive:
        total = 0
        for info in archive.infolist():
            if info.is_dir() or info.filename.startswith("__MACOSX/"):
                continue
            name = info.filename
            if _unsafe(name):
                report.rejected.append(Rejection(name, "unsafe path in zip (absolute or '..')"))
                continue
            if name.lower().endswith(".zip"):
                report.rejected.append(Rejection(name, "zip inside a zip is not accepted"))
                continue
            if info.file_size > images.MAX_BYTES:
                report.rejected.append(Rejection(name, f"too large ({info.file_size / 1e6:.0f} MB uncompressed)"))
                continue
            if info.compress_size and info.file_size / info.compress_size > MAX_RATIO and info.file_size > 1_000_000:
                report.rejected.append(Rejection(name, "compression ratio of a zip bomb"))
                continue
            total += info.file_size
            if total > MAX_ZIP_BYTES:
                report.rejected.append(Rejection(name, f"zip holds over {MAX_ZIP_BYTES // 2**20} MB uncompressed"))
                return
            try:
                with archive.open(info) as entry:
                    data = entry.read(images.MAX_BYTES + 1)  # never trust the declared size
            except Exception:
                report.rejected.append(Rejection(name, "corrupt entry in zip"))
                continue
            yield name, data


class UploadStore:
    def __init__(self, root):
        self.root = Path(root)
        self.images_dir = self.root / "images"
        self.manifest = self.root / "manifest.jsonl"
        self.images_dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    # --- reading ---------------------------------------------------------------------------
    def records(self) -> list[dict]:
        if not self.manifest.exists():
            return []
        out = []
        for line in self.manifest.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a crash: that image was never confirmed
            if (self.images_dir / record["image"]).exists():
                out.append(record)
        return out

    def load(self) -> tuple[np.ndarray, np.ndarray, list[dict]]:
        """All stored images (N, 32, 32, 3), labels (N,) with -1 for unlabeled, and the records."""
        records = self.records()
        if not records:
            return np.zeros((0, 32, 32, 3), np.uint8), np.zeros((0,), np.int64), []
        x = np.stack([np.asarray(Image.open(self.images_dir / r["image"]).convert("RGB")) for r in records])
        y = np.array([-1 if r["label"] is None else CLASSES.index(r["label"]) for r in records], np.int64)
        return x, y, records

    def counts(self, records: list[dict] | None = None) -> dict[str, dict[str, int]]:
        """Per-class counts of given labels and of predictions at upload (`records` if already read)."""
        records = self.records() if records is None else records
        given = {c: 0 for c in CLASSES}
        predicted = {c: 0 for c in CLASSES}
        for r in records:
            if r["label"]:
                given[r["label"]] += 1
            if r.get("predicted"):
                predicted[r["predicted"]] += 1
        return {"given labels": given, "predicted at upload": predicted}

    # --- writing ---------------------------------------------------------------------------
    def add(self, paths, batch: str, predict=None) -> UploadReport:
        """Validate and store images from `paths` (image files and zips).

        `predict(arrays) -> probabilities (N, 10)` records the current model's view of each image:
        its class and calibrated confidence in the manifest, the probabilities in the report.
        """
        report = UploadReport(batch=batch)
        candidates: list[tuple[str, np.ndarray, int | None]] = []
        known = {r["sha1"] for r in self.records()}
        for path in map(Path, paths):
            display = path.name
            if path.suffix.lower() == ".zip":
                entries = _zip_entries(path, report)
            else:
                entries = [(display, None)]
            for name, data in entries:
                if len(candidates) >= MAX_IMAGES:
                    report.rejected.append(Rejection(name, f"over the {MAX_IMAGES:,}-image limit of one upload"))
                    continue
                try:
                    array = images.to_array(data if data is not None else path)
                except images.ImageError as exc:
                    report.rejected.append(Rejection(name, str(exc).removeprefix(f"{path.name}: ")))
                    continue
                except OSError:
                    report.rejected.append(Rejection(name, "could not be read"))
                    continue
                candidates.append((name, array, label_from_name(name)))
        predicted = predict(np.stack([c[1] for c in candidates])) if predict and candidates else None
        accepted_rows = []
        with self._lock, open(self.manifest, "a") as manifest:
            for i, (name, array, label) in enumerate(candidates):
                digest = hashlib.sha1(array.tobytes()).hexdigest()
                if digest in known:
                    report.duplicates += 1
                    continue
                known.add(digest)
                image_name = f"{digest}.png"
                buffer = io.BytesIO()
                Image.fromarray(array).save(buffer, format="PNG")
                tmp = self.images_dir / f".{image_name}.tmp"
                tmp.write_bytes(buffer.getvalue())
                os.replace(tmp, self.images_dir / image_name)
                record = {"image": image_name, "sha1": digest, "file": PurePosixPath(name).name[:200],
                          "label": CLASSES[label] if label is not None else None, "batch": batch,
                          "predicted": CLASSES[int(predicted[i].argmax())] if predicted is not None else None,
                          "confidence": round(float(predicted[i].max()), 4) if predicted is not None else None}
                manifest.write(json.dumps(record) + "\n")
                accepted_rows.append(i)
                report.accepted += 1
                report.labeled += label is not None
            manifest.flush()
            os.fsync(manifest.fileno())
        if predicted is not None:
            report.probabilities = np.asarray(predicted)[accepted_rows]
        return report
