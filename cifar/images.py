"""Anything a user can send -> a validated 32x32 RGB uint8 array.

One path for every caller (training folders, evaluation, prediction, uploads), so the model
always sees pixels prepared the same way.
"""
import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

SIZE = 32
MAX_BYTES = 20 * 1024 * 1024        # a phone photo is ~5 MB; larger is refused before decoding
MAX_PIXELS = 50_000_000             # ~7000x7000; guards against decompression bombs


_SIGNATURES = (b"\x89PNG", b"\xff\xd8", b"GIF8", b"RIFF", b"BM", b"II*", b"MM\x00*")


class ImageError(ValueError):
    """An input that cannot become an image; the message is safe to show to users."""


class EmptyImageError(ImageError):
    pass


class NotAnImageError(ImageError):
    pass


class CorruptImageError(ImageError):
    pass


class ImageTooLargeError(ImageError):
    pass


def _open(source) -> Image.Image:
    if isinstance(source, Image.Image):
        return source
    if isinstance(source, (str, Path)):
        path = Path(source)
        size = path.stat().st_size
        if size == 0:
            raise EmptyImageError(f"{path.name}: the file is empty")
        if size > MAX_BYTES:
            raise ImageTooLargeError(f"{path.name}: {size / 1e6:.0f} MB is over the {MAX_BYTES // 2**20} MB limit")
        data = path.read_bytes()
    else:
        data = bytes(source)
        if not data:
            raise EmptyImageError("the file is empty")
        if len(data) > MAX_BYTES:
            raise ImageTooLargeError(f"{len(data) / 1e6:.0f} MB is over the {MAX_BYTES // 2**20} MB limit")
    try:
        return Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        if data.startswith(_SIGNATURES):
            raise CorruptImageError("corrupt or truncated image") from None
        raise NotAnImageError("not an image (PNG, JPEG, WebP, GIF, BMP or TIFF expected)") from None
    except Image.DecompressionBombError:
        raise ImageTooLargeError(f"too many pixels (limit {MAX_PIXELS:,})") from None
    except Exception as exc:  # Pillow raises many types for broken headers
        raise CorruptImageError(f"corrupt image ({exc.__class__.__name__})") from None


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # Deep grayscale: scale its own range to 8 bits instead of clipping at 255.
        pixels = np.asarray(image, dtype=np.float64)
        low, high = float(pixels.min()), float(pixels.max())
        scaled = (pixels - low) * (255.0 / (high - low)) if high > low else np.zeros_like(pixels)
        image = Image.fromarray(scaled.round().astype(np.uint8), "L")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        # Transparent pixels become white, as a viewer shows them.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB")


def _square(image: Image.Image) -> Image.Image:
    """The centred square crop: CIFAR-10 pictures are square, so stretching would distort objects."""
    width, height = image.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return image.crop((left, top, left + side, top + side))


def to_array(source) -> np.ndarray:
    """Decode `source` (bytes, a path, a PIL image or an HxWx{1,3,4} array) to (32, 32, 3) uint8.

    Phone photos are turned upright (EXIF), animations give their first frame, transparency is
    put on white, and the picture is centre-cropped to a square and resized with antialiasing.

    Raises:
        ImageError (EmptyImageError, NotAnImageError, CorruptImageError, ImageTooLargeError)
        with a message fit for the user.
    """
    if isinstance(source, np.ndarray):
        return _array_to_array(source)
    image = _open(source)
    width, height = image.size
    if width * height > MAX_PIXELS:
        raise ImageTooLargeError(f"{width}x{height} is over the {MAX_PIXELS:,}-pixel limit")
    if width == 0 or height == 0:
        raise CorruptImageError("the image has no pixels")
    try:
        image.seek(0)
        if image.format == "JPEG":
            image.draft("RGB", (SIZE * 4, SIZE * 4))  # decode big JPEGs at reduced scale: much faster
        image = ImageOps.exif_transpose(image)
        image = _to_rgb(image)
        if image.size != (SIZE, SIZE):
            image = _square(image).resize((SIZE, SIZE), Image.Resampling.LANCZOS, reducing_gap=3.0)
        return np.asarray(image, dtype=np.uint8)
    except ImageError:
        raise
    except Exception as exc:  # truncated data surfaces only when pixels are read
        raise CorruptImageError(f"corrupt or truncated image ({exc.__class__.__name__})") from None


def _array_to_array(array: np.ndarray) -> np.ndarray:
    if array.ndim == 3 and array.shape == (SIZE, SIZE, 3) and array.dtype == np.uint8:
        return array
    if array.ndim not in (2, 3) or array.size == 0:
        raise NotAnImageError(f"an image array must be HxW or HxWxC, got shape {array.shape}")
    if array.dtype != np.uint8:
        array = np.clip(array, 0, 255).astype(np.uint8)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    return to_array(Image.fromarray(array))
