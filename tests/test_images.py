"""Every kind of image a user may send becomes a 32x32 RGB array; bad bytes raise typed errors."""
import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from cifar import images


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def gradient(size=(64, 48)) -> Image.Image:
    w, h = size
    x = np.linspace(0, 255, w, dtype=np.uint8)[None, :].repeat(h, 0)
    y = np.linspace(0, 255, h, dtype=np.uint8)[:, None].repeat(w, 1)
    return Image.fromarray(np.stack([x, y, 255 - x], axis=2))


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF"])
def test_formats_become_32x32_rgb(fmt):
    out = images.to_array(encode(gradient(), fmt))
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8
    assert out[:, :, 0].mean() > 40  # real content, not a blank array


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "LA", "CMYK", "I;16", "1"])
def test_modes(mode):
    image = gradient().convert("RGBA" if mode == "LA" else "RGB")
    if mode == "I;16":
        gray = (np.asarray(gradient().convert("L"), dtype=np.uint16) * 257)
        image = Image.fromarray(gray)
    elif mode == "LA":
        image = image.convert("LA")
    else:
        image = image.convert(mode)
    fmt = "JPEG" if mode == "CMYK" else "PNG" if mode != "CMYK" else "TIFF"
    out = images.to_array(encode(image, fmt))
    assert out.shape == (32, 32, 3)
    assert out.std() > 10


def test_sixteen_bit_uses_full_range():
    gray = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    out = images.to_array(encode(Image.fromarray(gray), "PNG"))
    assert out.min() < 20 and out.max() > 235  # not clipped to white


def test_transparency_goes_on_white():
    clear = Image.new("RGBA", (40, 40), (255, 0, 0, 0))
    assert images.to_array(encode(clear, "PNG")).min() == 255


def test_exif_rotated_photo_is_turned_upright():
    # Left half red, right half blue, stored rotated; EXIF orientation 6 (rotate 90 CW to view).
    upright = np.zeros((40, 80, 3), np.uint8)
    upright[:, :40] = (255, 0, 0)
    upright[:, 40:] = (0, 0, 255)
    stored = Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90)  # what a phone writes
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(stored, "JPEG", exif=exif.tobytes(), quality=95)
    out = images.to_array(data)
    # The centre square of the upright picture spans both halves: red on the left, blue right.
    assert out[16, 2, 0] > 150 and out[16, 2, 2] < 100
    assert out[16, 29, 2] > 150 and out[16, 29, 0] < 100


def test_animated_gif_uses_first_frame():
    frames = [Image.new("RGB", (32, 32), c) for c in ((255, 0, 0), (0, 255, 0))]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:])
    out = images.to_array(buffer.getvalue())
    assert out[..., 0].mean() > 200 and out[..., 1].mean() < 50


def test_very_large_photo_is_antialiased():
    # A fine black/white checkerboard averages to gray with antialiasing, not to aliasing noise.
    board = (np.indices((3000, 4000)).sum(axis=0) % 2 * 255).astype(np.uint8)
    out = images.to_array(encode(Image.fromarray(board).convert("RGB"), "PNG"))
    assert abs(out.mean() - 127) < 10 and out.std() < 10


def test_paths_and_arrays(tmp_path):
    path = tmp_path / "x.png"
    gradient().save(path)
    assert images.to_array(path).shape == (32, 32, 3)
    assert images.to_array(np.asarray(gradient())).shape == (32, 32, 3)


def bomb_png(width=30000, height=30000) -> bytes:
    """A valid PNG header claiming a huge size, with a tiny compressed body."""
    def chunk(kind, payload):
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    body = zlib.compress(b"\x00" * (width + 1) * 64, 9)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


@pytest.mark.parametrize("data, error", [
    (b"", images.EmptyImageError),
    (b"just some text, renamed to .jpg", images.NotAnImageError),
    (bomb_png(), images.ImageTooLargeError),
    (b"\x00" * (images.MAX_BYTES + 1), images.ImageTooLargeError),
], ids=["empty", "text", "decompression-bomb", "too-many-bytes"])  # short ids: the bytes are the default
def test_bad_bytes_raise_typed_errors(data, error):
    with pytest.raises(error):
        images.to_array(data)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_files(fmt):
    data = encode(gradient((256, 256)), fmt)
    with pytest.raises(images.ImageError):
        images.to_array(data[: len(data) // 2])


def test_errors_are_value_errors_with_messages():
    with pytest.raises(ValueError, match="empty"):
        images.to_array(b"")
