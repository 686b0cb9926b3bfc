"""The upload store: user images, validated and kept as 32x32 PNGs under CIFAR_HOME/uploads.

Only decoded, re-encoded pixels are stored (never the user's bytes or file names as paths), so
nothing a user sends can be written outside the store or served back as-is. Each accepted
image is a line in an append-only manifest; a line is written only after its PNG is in place.
Labels set by people in the Review tab are lines of a second append-only file, reviews.jsonl:
the last line for an upload wins, the earlier ones stay as its history. Every line is flushed
and fsynced; a line cut by a crash is ignored on reading, so a label is either stored or not.
"""
import hashlib
import io
import json
import os
import re
import threading
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image

from . import CLASSES, images

MAX_IMAGES = 1000                      # per upload
MAX_ZIP_BYTES = 200 * 1024 * 1024      # uncompressed total of one zip
MAX_RATIO = 200                        # compression ratio above which an entry is a bomb
NOT_A_CLASS = "none"                   # a reviewer's verdict: none of the ten; never trained on
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
    images: np.ndarray | None = None         # the accepted images' pixels, (accepted, 32, 32, 3)


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


class UnknownUpload(KeyError):
    """A review names an upload the store does not hold."""


def read_lines(path: Path) -> list[dict]:
    """The JSON lines of an append-only file, oldest first; a line cut by a crash is left out."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut by a crash: never confirmed
    return out


class UploadStore:
    def __init__(self, root):
        self.root = Path(root)
        self.images_dir = self.root / "images"
        self.manifest = self.root / "manifest.jsonl"
        self.reviews_file = self.root / "reviews.jsonl"
        self.images_dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    # --- reading ---------------------------------------------------------------------------
    def records(self) -> list[dict]:
        """Every stored upload, oldest first, with the reviews applied: `label` is the class a
        person gave it (reviewed) or its name gave it, None if unlabeled; `source` says which
        ("review", "name", None); `excluded` marks one reviewed as none of the ten classes."""
        reviews = self.reviews()
        out = []
        for record in read_lines(self.manifest):
            if not (self.images_dir / record["image"]).exists():
                continue
            record["source"] = "name" if record["label"] else None
            record["excluded"] = False
            if record["sha1"] in reviews:
                reviewed = reviews[record["sha1"]]
                record["excluded"] = reviewed == NOT_A_CLASS
                record["label"] = None if record["excluded"] else reviewed
                record["source"] = "review"
            out.append(record)
        return out

    def reviews(self) -> dict[str, str]:
        """The standing review of each reviewed upload: a class name or NOT_A_CLASS (the last
        line for an upload wins; a line with label None clears it)."""
        standing: dict[str, str] = {}
        # By time, not by file order: lines from other replicas arrive late, and every replica
        # must agree which label is the last.
        for line in sorted(read_lines(self.reviews_file), key=lambda line: line.get("time", 0)):
            if line.get("label") is None:
                standing.pop(line["id"], None)
            else:
                standing[line["id"]] = line["label"]
        return standing

    def manifest_entries(self) -> list[dict]:
        """The manifest's lines as written, oldest first (what a copy elsewhere needs)."""
        return read_lines(self.manifest)

    def review_entries(self) -> list[dict]:
        """The review lines as written, oldest first."""
        return read_lines(self.reviews_file)

    def review_history(self, upload_id: str) -> list[dict]:
        return [line for line in read_lines(self.reviews_file) if line["id"] == upload_id]

    def image_path(self, upload_id: str) -> Path:
        return self.images_dir / f"{upload_id}.png"

    def load(self) -> tuple[np.ndarray, np.ndarray, list[dict]]:
        """Stored images to learn from (N, 32, 32, 3), labels (N,) with -1 for unlabeled, and
        their records; uploads reviewed as none of the classes are left out."""
        records = [r for r in self.records() if not r["excluded"]]
        if not records:
            return np.zeros((0, 32, 32, 3), np.uint8), np.zeros((0,), np.int64), []
        x = np.stack([np.asarray(Image.open(self.images_dir / r["image"]).convert("RGB")) for r in records])
        y = np.array([-1 if r["label"] is None else CLASSES.index(r["label"]) for r in records], np.int64)
        return x, y, records

    # --- reviewing -------------------------------------------------------------------------
    def review(self, upload_id: str, label: str | None, reviewer: str = "") -> str | None:
        """Store a person's label for one upload (a class name, NOT_A_CLASS, or None to take the
        review back); returns the review it replaces. Appended, fsynced: crash-safe.

        Raises:
            UnknownUpload: no such upload in the store.
            ValueError: not a class name.
        """
        if label is not None and label not in CLASSES and label != NOT_A_CLASS:
            raise ValueError(f"unknown class {label!r}; use one of {', '.join(CLASSES)} or {NOT_A_CLASS!r}")
        if not re.fullmatch(r"[0-9a-f]{40}", upload_id or "") or not self.image_path(upload_id).exists():
            raise UnknownUpload(upload_id)
        with self._lock, open(self.reviews_file, "a+b") as handle:
            previous = self.reviews().get(upload_id)
            handle.seek(0, os.SEEK_END)
            if handle.tell() and (handle.seek(-1, os.SEEK_END), handle.read(1))[1] != b"\n":
                handle.write(b"\n")  # a line cut by a crash: end it, so this one stands alone
            handle.write(json.dumps({"id": upload_id, "label": label, "previous": previous,
                                     "time": round(time.time(), 3), "reviewer": reviewer[:100]}).encode() + b"\n")
            handle.flush()
            os.fsync(handle.fileno())
        return previous

    def counts(self, records: list[dict] | None = None) -> dict[str, dict[str, int]]:
        """Per-class counts of given labels and of predictions at upload (`records` if already read)."""
        records = self.records() if records is None else records
        given = {c: 0 for c in CLASSES}
        predicted = {c: 0 for c in CLASSES}
        for r in records:
            if r["label"]:  # from the file name or a review
                given[r["label"]] += 1
            if r.get("predicted"):
                predicted[r["predicted"]] += 1
        return {"labels (file names and reviews)": given, "predicted at upload": predicted}

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
            report.images = np.stack([candidates[i][1] for i in accepted_rows]) if accepted_rows else None
        return report

    # --- a copy from elsewhere (the Hub) ----------------------------------------------------
    def import_copy(self, entries: list[dict], reviews: list[dict], image_file,
                    origin: str | None = None) -> tuple[int, int, list[str]]:
        """Add what a copy elsewhere holds (the Hub: a restore, or another replica's uploads):
        manifest `entries` the store lacks (by image hash), the `reviews` it lacks (a line
        identical to one it has is the same line), and `image_file(name) -> Path | None` for each
        new image. An image that is missing, undecodable or not the pixels its hash names is
        skipped and said so; so are reviews of uploads the store does not hold. Each added line
        is marked with `origin` (who wrote it first), so it is never synced back as this app's
        own. Returns (uploads, reviews, skipped)."""
        def same(line: dict) -> str:  # a review line, whoever imported it
            return json.dumps({k: v for k, v in line.items() if k != "origin"}, sort_keys=True)

        skipped, kept = [], []
        with self._lock:
            seen = {line.get("sha1") for line in read_lines(self.manifest)}
            have = {same(line) for line in read_lines(self.reviews_file)}
        for entry in entries:
            digest = str(entry.get("sha1", ""))
            if not re.fullmatch(r"[0-9a-f]{40}", digest) or digest in seen:
                continue
            source = image_file(f"{digest}.png")
            try:
                array = images.to_array(source) if source is not None else None
            except (images.ImageError, OSError):
                array = None
            if array is None or hashlib.sha1(array.tobytes()).hexdigest() != digest:
                skipped.append(f"{digest[:10]}: image {'missing' if source is None else 'corrupt'} on the Hub, left out")
                continue
            buffer = io.BytesIO()
            Image.fromarray(array).save(buffer, format="PNG")
            (self.images_dir / f"{digest}.png").write_bytes(buffer.getvalue())
            seen.add(digest)
            kept.append({**entry, "image": f"{digest}.png", "origin": entry.get("origin") or origin})
        unique = {}
        for line in sorted(reviews, key=lambda r: r.get("time", 0)):
            key = same(line)
            if line.get("id") in seen and key not in have:  # a line twice is one line
                unique[key] = {**line, "origin": line.get("origin") or origin}
        with self._lock:
            for path, lines in ((self.manifest, kept), (self.reviews_file, list(unique.values()))):
                with open(path, "a") as handle:
                    handle.writelines(json.dumps(line) + "\n" for line in lines)
                    handle.flush()
                    os.fsync(handle.fileno())
        return len(kept), len(unique), skipped
