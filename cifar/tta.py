"""Test-time augmentation: the views of each image the network sees, and their logits merged.

Levels (airbench's): 0 the image alone; 1 the image and its mirror; 2 both, plus both shifted
one pixel up-left and down-right (6 views). Under load the micro-batcher may serve a lower level.
"""
import numpy as np

LEVEL = 2
LEVELS = (0, 1, 2)
VIEWS = {0: 1, 1: 2, 2: 6}  # network passes per image at each level
NAMES = {0: "image alone", 1: "flip only", 2: "6 views"}


def _shift(x: np.ndarray, dy: int, dx: int) -> np.ndarray:
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
    return padded[:, 1 + dy:33 + dy, 1 + dx:33 + dx]


def views(x: np.ndarray, level: int = LEVEL) -> list[tuple[float, np.ndarray]]:
    """(logit weight, images) for each view of the batch `x`."""
    if level == 0:
        return [(1.0, x)]
    out = [(0.5, x), (0.5, x[:, :, ::-1])]
    if level >= 2:
        out = [(0.25, v) for _, v in out]
        for dy, dx in ((-1, -1), (1, 1)):
            shifted = _shift(x, dy, dx)
            out += [(0.125, shifted), (0.125, shifted[:, :, ::-1])]
    return out


# Each level's views' logit weights, in the order `views` gives them (read off `views` itself).
WEIGHTS = {level: [w for w, _ in views(np.zeros((1, 32, 32, 3), np.uint8), level)] for level in LEVELS}


def logits(network, x: np.ndarray, level: int, batch_size: int = 256) -> np.ndarray:
    """Weighted logits of `network` (float32 batch -> logits) over the views of uint8 `x`."""
    return _merged(network, x, level, (level,), batch_size)[level]


def logits_by_level(network, x: np.ndarray, level: int, batch_size: int = 256) -> dict[int, np.ndarray]:
    """`logits` at `level` and at every level below it, from one pass: each level's views are the
    first views of the next (the image, its mirror, then the shifts), so the lower ones are free."""
    return _merged(network, x, level, tuple(low for low in LEVELS if low <= level), batch_size)


def _merged(network, x: np.ndarray, level: int, levels: tuple, batch_size: int) -> dict[int, np.ndarray]:
    """`network`'s logits over the views of `level`, merged with the weights of each of `levels`
    (none above `level`). All views of a chunk go through the network as one batch: fewer, larger
    matmuls."""
    out = {low: np.zeros((len(x), 10), dtype=np.float32) for low in levels}
    if len(x) == 0:
        return out
    chunk_views = views(x, level)
    chunk = max(1, batch_size // len(chunk_views))
    for start in range(0, len(x), chunk):
        part = slice(start, start + chunk)
        stacked = np.concatenate([v[part] for _, v in chunk_views]).astype(np.float32)
        raw = network(stacked)
        n = min(chunk, len(x) - start)
        for low in levels:
            out[low][part] = sum(w * raw[i * n:(i + 1) * n] for i, w in enumerate(WEIGHTS[low]))
    return out
