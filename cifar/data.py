"""CIFAR-10 as arrays: from a folder `ROOT/{train,test}/<class>/<image>` or the official download."""
import hashlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from . import CLASSES, config, images

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff"}


class DatasetError(ValueError):
    """The dataset folder is missing, incomplete or holds unreadable images; names the path."""


def _list_split(root: Path, split: str) -> tuple[list[Path], np.ndarray]:
    split_dir = root / split
    if not split_dir.is_dir():
        raise DatasetError(f"missing split folder: {split_dir}")
    files, labels = [], []
    for label, name in enumerate(CLASSES):
        class_dir = split_dir / name
        if not class_dir.is_dir():
            raise DatasetError(f"missing class folder: {class_dir}")
        found = sorted(p for p in class_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        files += found
        labels += [label] * len(found)
    if not files:
        raise DatasetError(f"empty split, no images under {split_dir}")
    return files, np.asarray(labels, dtype=np.int64)


def _decode(path: Path) -> np.ndarray:
    try:
        return images.to_array(path)
    except images.ImageError as exc:
        raise DatasetError(f"unreadable image {path}: {exc}") from None


def load_folder(root, split: str, cache: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 32, 32, 3) uint8 and labels (N,) int64 of one split of a CIFAR-10 folder.

    Decoded arrays are cached under CIFAR_HOME/cache, keyed by the file list, so a second
    load takes a second instead of a minute.

    Raises:
        DatasetError: a missing folder or class, an empty split or an unreadable image.
    """
    root = Path(root).resolve()
    files, labels = _list_split(root, split)
    key = hashlib.sha1("\n".join(f"{p}:{p.stat().st_size}" for p in files).encode()).hexdigest()[:16]
    cached = config.cache_dir() / f"{split}-{key}.npz"
    if cache and cached.exists():
        with np.load(cached) as stored:
            return stored["x"], stored["y"]
    with ThreadPoolExecutor(8) as pool:
        x = np.stack(list(pool.map(_decode, files, chunksize=256)))
    if cache:
        partial = cached.with_suffix(".tmp.npz")
        np.savez(partial, x=x, y=labels)
        partial.replace(cached)
    return x, labels


def load_official(split: str) -> tuple[np.ndarray, np.ndarray]:
    """The official CIFAR-10 release through keras.datasets (needs internet the first time)."""
    import keras

    (x_train, y_train), (x_test, y_test) = keras.datasets.cifar10.load_data()
    x, y = (x_train, y_train) if split == "train" else (x_test, y_test)
    return x.astype(np.uint8), y.reshape(-1).astype(np.int64)


def write_official(target) -> Path:
    """Download the official release (keras.datasets) and write it as this module's folder layout,
    lossless PNGs: `target/{train,test}/<class>/NNNNN.png`. Written to a temporary folder first, so
    an interrupted download leaves no half dataset behind."""
    from PIL import Image

    target = Path(target).resolve()
    partial = target.with_name(target.name + ".partial")
    for split in ("train", "test"):
        x, y = load_official(split)
        for name in CLASSES:
            (partial / split / name).mkdir(parents=True, exist_ok=True)
        for i, (image, label) in enumerate(zip(x, y)):
            Image.fromarray(image).save(partial / split / CLASSES[label] / f"{i:05d}.png")
    partial.replace(target)
    return target


def load(source, split: str) -> tuple[np.ndarray, np.ndarray]:
    """`source` is a folder path, or "official" for the Keras download."""
    if str(source) == "official":
        return load_official(split)
    return load_folder(source, split)


def balanced_subset(labels: np.ndarray, per_class: int, seed: int = 0) -> np.ndarray:
    """Indices of `per_class` examples of each class, fixed by `seed`, in sorted order."""
    rng = np.random.default_rng(seed)
    picks = [rng.choice(np.flatnonzero(labels == c), per_class, replace=False) for c in range(len(CLASSES))]
    return np.sort(np.concatenate(picks))


# --- small data shipped in assets/, so retraining works on a fresh offline machine ----------

def holdout_path() -> Path:
    return config.ROOT / "assets" / "holdout.npz"


def replay_path() -> Path:
    return config.ROOT / "assets" / "replay.npz"


def load_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with np.load(path) as stored:
        return stored["x"], stored["y"]


HOLDOUT_NAME = "assets/holdout.npz (2,000 CIFAR-10 test images)"  # how metadata names them


def eval_set_words(name: str | None, count: int) -> str:
    """A version's evaluation set as people read it ("10,000 CIFAR-10 test images"), whatever
    folder of the machine that measured it its metadata names."""
    held_out = " held-out" if name == HOLDOUT_NAME else ""
    return f"{count:,}{held_out} CIFAR-10 test images"


def holdout() -> tuple[np.ndarray, np.ndarray]:
    """2,000 test images (200 a class) that judge every new version before it is promoted."""
    return load_npz(holdout_path())


def replay(count: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """`count` original training images mixed into retraining so the model does not forget,
    from the 3,000 shipped in assets/ (so a fresh offline Space retrains the same way)."""
    x, y = load_npz(replay_path())
    picks = balanced_subset(y, min(count // len(CLASSES), int(np.bincount(y).min())), seed)
    return x[picks], y[picks]


def write_assets(source, examples_dir: Path) -> None:
    """Create assets/holdout.npz, assets/replay.npz and one example image per class."""
    from PIL import Image

    x_test, y_test = load(source, "test")
    x_train, y_train = load(source, "train")
    held = balanced_subset(y_test, 200, seed=1)
    np.savez_compressed(holdout_path(), x=x_test[held], y=y_test[held])
    kept = balanced_subset(y_train, 300, seed=1)
    np.savez_compressed(replay_path(), x=x_train[kept], y=y_train[kept])
    examples_dir.mkdir(parents=True, exist_ok=True)
    outside_holdout = np.setdiff1d(np.arange(len(y_test)), held)
    for label, name in enumerate(CLASSES):
        index = outside_holdout[y_test[outside_holdout] == label][0]
        Image.fromarray(x_test[index]).resize((128, 128), Image.Resampling.NEAREST).save(examples_dir / f"{name}.png")
