"""Dataset folders: clear errors that name the path; arrays and labels in the usual order."""
import numpy as np
import pytest
from PIL import Image

from cifar import CLASSES, data


def make_folder(root, per_class=2, splits=("train", "test")):
    for split in splits:
        for label, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(per_class):
                Image.new("RGB", (32, 32), (label * 20, i * 50, 0)).save(folder / f"{i:04d}.png")
    return root


def test_loads_images_and_labels(tmp_path):
    x, y = data.load_folder(make_folder(tmp_path / "c"), "train")
    assert x.shape == (20, 32, 32, 3) and x.dtype == np.uint8
    assert list(y) == [c for c in range(10) for _ in range(2)]
    assert x[2, 0, 0, 0] == 20  # the first image of class 1 carries its own pixels


def test_missing_folder_split_class_and_empty(tmp_path):
    with pytest.raises(data.DatasetError, match="nowhere"):
        data.load_folder(tmp_path / "nowhere", "train")
    root = make_folder(tmp_path / "c")
    for image in (root / "test" / "frog").iterdir():
        image.unlink()
    (root / "test" / "frog").rmdir()
    with pytest.raises(data.DatasetError, match="frog"):
        data.load_folder(root, "test")
    empty = make_folder(tmp_path / "e", per_class=0)
    with pytest.raises(data.DatasetError, match="empty split"):
        data.load_folder(empty, "train")


def test_unreadable_image_names_its_path(tmp_path):
    root = make_folder(tmp_path / "c")
    (root / "train" / "cat" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(data.DatasetError, match="broken.png"):
        data.load_folder(root, "train", cache=False)


def test_balanced_subset_is_fixed_and_balanced():
    labels = np.repeat(np.arange(10), 50)
    a, b = data.balanced_subset(labels, 7, seed=3), data.balanced_subset(labels, 7, seed=3)
    assert np.array_equal(a, b) and np.bincount(labels[a]).tolist() == [7] * 10


def test_shipped_holdout_and_replay_are_balanced():
    x, y = data.holdout()
    assert x.shape == (2000, 32, 32, 3) and np.bincount(y).tolist() == [200] * 10
    x, y = data.load_npz(data.replay_path())
    assert len(x) >= 2500 and np.bincount(y).min() == np.bincount(y).max()
