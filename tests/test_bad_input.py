"""Bad input through the real app: a clear message, the server stays up, nothing stored is lost."""
import io
import struct
import zipfile
import zlib

import httpx
import numpy as np
import pytest
from gradio_client import Client, handle_file
from PIL import Image

from cifar import CLASSES


@pytest.fixture(scope="module")
def client(app_server):
    return Client(app_server.url, verbose=False)


def bomb_png(side=30000) -> bytes:
    def chunk(kind, payload):
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
    body = zlib.compress(b"\x00" * (side + 1) * 16, 9)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", body) + chunk(b"IEND", b""))


def encoded(image, fmt, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def photo(size=(96, 64), seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


BAD = {
    "zero.jpg": (b"", "empty"),
    "text.jpg": (b"hello, I am text renamed to .jpg", "not an image"),
    "truncated.png": (encoded(photo((300, 300)), "PNG")[:500], "corrupt"),
    "truncated.jpg": (encoded(photo((300, 300)), "JPEG")[:700], "corrupt"),
    "bomb.png": (bomb_png(), "pixel"),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_files_get_clear_messages(client, tmp_path, name):
    data, expected = BAD[name]
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(Exception) as info:
        client.predict(handle_file(str(path)), api_name="/predict")
    message = str(info.value)
    assert expected in message.lower() and "Traceback" not in message
    label, _ = client.predict(handle_file("assets/examples/frog.png"), api_name="/predict")  # still up
    assert label["label"] in CLASSES


def exif_rotated() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6
    return encoded(photo(), "JPEG", exif=exif.tobytes())


def animated_gif() -> bytes:
    frames = [photo(), photo().transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:])
    return buffer.getvalue()


GOOD = {
    "animated.gif": animated_gif,
    "deep.png": lambda: encoded(Image.fromarray((np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16)), "PNG"),
    "cmyk.jpg": lambda: encoded(photo().convert("CMYK"), "JPEG"),
    "rotated.jpg": exif_rotated,
}


@pytest.mark.parametrize("name", sorted(GOOD))
def test_unusual_but_valid_images_predict(client, tmp_path, name):
    path = tmp_path / name
    path.write_bytes(GOOD[name]())
    label, _ = client.predict(handle_file(str(path)), api_name="/predict")
    assert label["label"] in CLASSES and len(label["confidences"]) == 3


def test_oversized_upload_is_refused_by_the_server(app_server, tmp_path):
    big = tmp_path / "big.jpg"
    with open(big, "wb") as handle:
        handle.truncate(200 * 1024 * 1024)  # 200 MB, sparse on disk
    with open(big, "rb") as handle:
        response = httpx.post(f"{app_server.url}/gradio_api/upload", files={"files": ("big.jpg", handle)}, timeout=120)
    assert response.status_code == 413 and "maximum allowed size" in response.text
    assert httpx.get(f"{app_server.url}/gradio_api/info", timeout=10).status_code == 200


def test_hostile_zip_writes_nothing_outside(client, app_server, tmp_path):
    archive = tmp_path / "hostile.zip"
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as z:
        z.writestr("a.png", encoded(photo(), "PNG"))
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("../../escaped.png", encoded(photo(), "PNG"))
        z.writestr("/tmp/absolute-escape.png", encoded(photo(), "PNG"))
        z.writestr("inner.zip", inner.getvalue())
        z.writestr("bomb.png", b"\x00" * (60 * 1024 * 1024))
        z.writestr("ok/dog_1.png", encoded(photo(seed=20261201), "PNG"))  # seen by no other test
    before = sorted(p.name for p in app_server.home.parent.rglob("*"))
    summary, rejected, _ = client.predict([handle_file(str(archive))], api_name="/upload")
    reasons = {r[0]: r[1] for r in rejected["data"]}
    assert "unsafe path" in reasons["../../escaped.png"] and "unsafe path" in reasons["/tmp/absolute-escape.png"]
    assert "zip inside a zip" in reasons["inner.zip"] and "too large" in reasons["bomb.png"]
    assert "**1 accepted**" in summary, summary
    new_files = set(p.name for p in app_server.home.parent.rglob("*")) - set(before)
    assert "escaped.png" not in new_files and not (tmp_path.parent / "escaped.png").exists()
    assert not __import__("pathlib").Path("/tmp/absolute-escape.png").exists()


def test_1001_images_are_cut_at_1000(client, tmp_path):
    archive = tmp_path / "many.zip"
    rng = np.random.default_rng(7)
    with zipfile.ZipFile(archive, "w") as z:
        for i in range(1001):
            z.writestr(f"{i}.png", encoded(Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)), "PNG"))
    summary, rejected, _ = client.predict([handle_file(str(archive))], api_name="/upload")
    assert "**1000 accepted**" in summary
    assert [r[1] for r in rejected["data"]] == ["over the 1,000-image limit of one upload"]


@pytest.mark.parametrize("api_name, args, expected", [
    ("/predict", [None], "No image given"),
    ("/predict_batch", [[]], "No images given"),
    ("/upload", [[]], "No files given"),
    ("/rollback", ["no-such-version", ""], "no version"),
    ("/push", ["", ""], "No Hub repository"),
    ("/metrics", ["no-such-version", ""], "no version"),
    ("/label", ["f" * 40, "dog", ""], "No upload with id"),
    ("/label", ["../../models/state", "dog", ""], "No upload with id"),
    ("/review_queue", [5, "dragon", ""], "Unknown class 'dragon'"),
])
def test_empty_or_wrong_requests_get_clean_errors(client, api_name, args, expected):
    with pytest.raises(Exception) as info:
        client.predict(*args, api_name=api_name)
    assert expected.lower() in str(info.value).lower() and "Traceback" not in str(info.value)


def test_private_files_are_not_served(app_server):
    for path in (app_server.home / "uploads" / "manifest.jsonl", app_server.home / "uploads" / "reviews.jsonl",
                 app_server.home / "models" / "state.json",
                 "/etc/passwd", app_server.home.parent.parent / "app.py"):
        response = httpx.get(f"{app_server.url}/gradio_api/file={path}", timeout=10)
        assert response.status_code in (403, 404), path
