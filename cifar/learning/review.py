"""A person in the loop: the unlabeled uploads the model is least sure of, first.

Uncertainty sampling (as in Label Studio's or Prodigy's active learning): the smaller the gap
between the model's two most probable classes (calibrated), the more a person's label is worth.
Reviewed labels are stored by the upload store; the next retrain trains on them as labels.
"""
import base64
import threading

import numpy as np
from PIL import Image

from .. import CLASSES


def margin(probabilities: np.ndarray) -> np.ndarray:
    """Top probability minus the runner-up's: 0 for a coin toss between two classes."""
    top2 = np.sort(probabilities, axis=1)[:, -2:]
    return top2[:, 1] - top2[:, 0]


def order(probabilities: np.ndarray) -> np.ndarray:
    """Indices from the least sure to the surest (ties by position: stable)."""
    return np.argsort(margin(probabilities), kind="stable")


class ReviewQueue:
    """The queue over an upload store, for the serving predictor. The model's view of each
    upload is computed once per version (a batch through the network) and kept in memory."""

    def __init__(self, uploads):
        self.uploads = uploads
        self._lock = threading.Lock()
        self._version = None
        self._probabilities: dict[str, np.ndarray] = {}

    def _views(self, predictor, records: list[dict]) -> np.ndarray:
        with self._lock:
            if predictor.version != self._version:
                self._version, self._probabilities = predictor.version, {}
            missing = [r for r in records if r["sha1"] not in self._probabilities]
            if missing:
                x = np.stack([np.asarray(Image.open(self.uploads.images_dir / r["image"]).convert("RGB"))
                              for r in missing])
                for r, p in zip(missing, predictor.predict_arrays(x)):
                    self._probabilities[r["sha1"]] = p
            return np.stack([self._probabilities[r["sha1"]] for r in records]) if records else np.zeros((0, 10))

    def next(self, predictor, k: int, predicted: str | None = None, skip=()) -> list[dict]:
        """Up to `k` unlabeled, unreviewed uploads, least sure first, optionally only those the
        model puts in class `predicted`; `skip`: ids to leave out (skipped in this session)."""
        records = [r for r in self.uploads.records() if r["label"] is None and not r["excluded"]
                   and r["sha1"] not in set(skip)]
        probabilities = self._views(predictor, records)
        items = []
        for i in order(probabilities):
            guess = CLASSES[int(probabilities[i].argmax())]
            if predicted and guess != predicted:
                continue
            items.append({"id": records[i]["sha1"], "guess": guess, "confidence": round(float(probabilities[i].max()), 4),
                          "margin": round(float(margin(probabilities[i:i + 1])[0]), 4), "file": records[i]["file"]})
            if len(items) >= k:
                break
        return items

    def progress(self, predictor) -> dict:
        """How far review has come, and what it measured: how often the model's guess on the
        reviewed uploads was right (real labels, so a real accuracy on the hardest ones)."""
        records = self.uploads.records()
        reviewed = [r for r in records if r["source"] == "review"]
        unlabeled = [r for r in records if r["label"] is None and not r["excluded"]]
        classed = [r for r in reviewed if not r["excluded"]]
        guesses = self._views(predictor, classed)
        right = int(sum(CLASSES[int(p.argmax())] == r["label"] for p, r in zip(guesses, classed)))
        return {"reviewed": len(reviewed), "left": len(unlabeled), "not_a_class": len(reviewed) - len(classed),
                "guess_right": right, "guess_checked": len(classed)}


def enlarged(uploads, upload_id: str, scale: int = 8) -> Image.Image:
    """A stored 32x32 upload blown up with hard pixel edges, at a size a person can judge."""
    image = Image.open(uploads.image_path(upload_id)).convert("RGB")
    return image.resize((32 * scale, 32 * scale), Image.Resampling.NEAREST)


def data_url(uploads, upload_id: str) -> str:
    """The stored PNG as a data URL, for API clients (a few kilobytes)."""
    return "data:image/png;base64," + base64.b64encode(uploads.image_path(upload_id).read_bytes()).decode()
