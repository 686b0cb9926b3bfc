"""The upload store: labels from names, every rejection with its reason, nothing escapes."""
import io
import zipfile

import numpy as np
import pytest
from PIL import Image

from cifar import uploads
from cifar.uploads import UploadStore, label_from_name


def png(color=(10, 20, 30), size=(32, 32)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def noise_png(seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("name, label", [
    ("dog/x.png", 5), ("photos/Cat/1.jpg", 3), ("dog_12.jpg", 5), ("truck-3.png", 9), ("ship7.png", 8),
    ("x.png", None), ("hotdog_1.png", None), ("doge.png", None), ("catalog/a.png", None),
])
def test_label_from_name(name, label):
    assert label_from_name(name) == label


def make_zip(path, entries):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries:
            archive.writestr(name, data)
    return path


def test_zip_with_good_labeled_and_bad_files(tmp_path):
    inner = make_zip(tmp_path / "inner.zip", [("a.png", png())])
    archive = make_zip(tmp_path / "up.zip", [
        ("dog/a.png", noise_png(1)), ("cat_2.png", noise_png(2)), ("x.png", noise_png(3)),
        ("../evil.png", noise_png(4)), ("/abs/evil.png", noise_png(5)), ("nested.zip", inner.read_bytes()),
        ("notes.jpg", b"text, not a picture"), ("empty.png", b""), ("trunc.png", noise_png(6)[:40]),
    ])
    store = UploadStore(tmp_path / "store")
    report = store.add([archive], batch="b1")
    assert (report.accepted, report.labeled) == (3, 2)
    reasons = {r.file: r.reason for r in report.rejected}
    assert "unsafe path" in reasons["../evil.png"] and "unsafe path" in reasons["/abs/evil.png"]
    assert "zip inside a zip" in reasons["nested.zip"]
    assert "not an image" in reasons["notes.jpg"] and "empty" in reasons["empty.png"]
    assert "corrupt" in reasons["trunc.png"]
    # Only re-encoded 32x32 PNGs named by content hash are stored, inside the store.
    stored = sorted(p for p in (tmp_path).rglob("*") if p.is_file())
    assert all(str(p).startswith(str(tmp_path / "store")) for p in stored if p.suffix == ".png")
    assert not (tmp_path / "evil.png").exists() and not (tmp_path.parent / "evil.png").exists()
    x, y, _records = store.load()
    assert x.shape == (3, 32, 32, 3) and sorted(y.tolist()) == [-1, 3, 5]


def test_uploads_survive_a_new_store_and_skip_duplicates(tmp_path):
    files = []
    for i in range(3):
        files.append(tmp_path / f"frog_{i}.png")
        files[-1].write_bytes(noise_png(i))
    UploadStore(tmp_path / "s").add(files, batch="b1")
    again = UploadStore(tmp_path / "s")  # as after a restart
    report = again.add(files[:1], batch="b2")
    assert report.duplicates == 1 and report.accepted == 0
    assert len(again.records()) == 3 and again.counts()["labels (file names and reviews)"]["frog"] == 3


def test_more_than_1000_images(tmp_path):
    archive = make_zip(tmp_path / "many.zip", [(f"{i}.png", noise_png(i)) for i in range(uploads.MAX_IMAGES + 1)])
    report = UploadStore(tmp_path / "s").add([archive], batch="b")
    assert report.accepted == uploads.MAX_IMAGES
    assert [r.reason for r in report.rejected] == ["over the 1,000-image limit of one upload"]


def test_zip_bomb_and_corrupt_zip(tmp_path):
    bomb = make_zip(tmp_path / "bomb.zip", [("big.png", b"\x00" * (50 * 1024 * 1024))])
    assert bomb.stat().st_size < 200_000
    store = UploadStore(tmp_path / "s")
    report = store.add([bomb], batch="b")
    assert report.accepted == 0 and "too large" in report.rejected[0].reason
    small_bomb = make_zip(tmp_path / "b2.zip", [("b.png", b"\x00" * 5_000_000)])
    assert "zip bomb" in store.add([small_bomb], batch="b").rejected[0].reason
    broken = tmp_path / "broken.zip"
    broken.write_bytes(b"PK\x03\x04 not really")
    assert store.add([broken], batch="b").rejected[0].reason == "corrupt zip file"


def test_half_written_manifest_line_is_ignored(tmp_path):
    store = UploadStore(tmp_path / "s")
    path = tmp_path / "dog_1.png"
    path.write_bytes(noise_png(9))
    store.add([path], batch="b")
    with open(store.manifest, "a") as handle:
        handle.write('{"image": "cut-by-a-crash')  # a process killed mid-write
    assert len(UploadStore(tmp_path / "s").records()) == 1
