"""The field's standard corruptions (CIFAR-10-C, Hendrycks & Dietterich, ICLR 2019), made by a
maintained library (`imagecorruptions-imaug`, the ImageNet-C code's fork), or read from the
published CIFAR-10-C files: the 15 for reporting, the 4 held out for choosing settings.
Used by bench-corruptions (the served model and its estimate) and bench-retrain (one retrain on
each corruption)."""
from pathlib import Path

import numpy as np

CORRUPTIONS = ("gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur",
               "zoom_blur", "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate",
               "jpeg_compression")
HELD_OUT = ("speckle_noise", "gaussian_blur", "spatter", "saturate")
# Error (%) at severity 5 of CIFAR-10-C, WRN-28-10: without adaptation ("source") and with the
# BatchNorm statistics of each test batch ("norm"). Tent's official repository, README.
PUBLISHED = {
    "source": dict(zip(CORRUPTIONS, (72.3, 65.7, 72.9, 46.9, 54.3, 34.8, 42.0, 25.1, 41.3, 26.0, 9.3, 46.7, 26.6,
                                     58.5, 30.3))),
    "norm": dict(zip(CORRUPTIONS, (28.1, 26.1, 36.3, 12.8, 35.3, 14.2, 12.1, 17.3, 17.4, 15.3, 8.4, 12.6, 23.8,
                                   19.7, 27.3))),
}


def corrupt(x: np.ndarray, name: str, severity: int, seed: int = 0) -> np.ndarray:
    """`x` (N, 32, 32, 3) uint8 with corruption `name` at `severity` (1-5), reproducibly."""
    try:
        from imagecorruptions import corrupt as one
    except ImportError:
        raise SystemExit("bench-corruptions needs the corruptions library: pip install imagecorruptions-imaug") from None
    state = np.random.get_state()
    np.random.seed(seed)  # the library draws from NumPy's global generator
    try:
        return np.stack([np.clip(one(image, corruption_name=name, severity=severity), 0, 255).astype(np.uint8)
                         for image in x])
    finally:
        np.random.set_state(state)


def from_cifar10c(folder: Path, name: str, severity: int, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The published CIFAR-10-C images (`<name>.npy`: 5 severities x 10,000, `labels.npy`)."""
    images = np.load(Path(folder) / f"{name}.npy", mmap_mode="r")
    labels = np.load(Path(folder) / "labels.npy")
    rows = (severity - 1) * 10000 + indices
    return np.asarray(images[rows]), labels[rows]
