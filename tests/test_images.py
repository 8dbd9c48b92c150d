"""Image datasets: IDX reading, Fashion-MNIST from tiny files written here, folders of PNG/JPEG."""

import gzip
import os
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from fewstep.data import DATASETS, make_dataset
from fewstep.data.images import FashionMNIST, ImageFolder, read_idx
from fewstep.errors import FewstepError

REAL_ROOT = "/usr/share/datasets/fashion-mnist"


def write_idx(path, array, gz=False, code=0x08):
    """Write a big-endian IDX file (the MNIST format)."""
    array = np.asarray(array)
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    dtype = {0x08: ">u1", 0x0B: ">i2", 0x0D: ">f4"}[code]
    data = header + array.astype(dtype).tobytes()
    with (gzip.open if gz else open)(path, "wb") as f:
        f.write(data)
    return path


def write_fashion(root, prefix="t10k", n=20, gz=True):
    """Tiny Fashion-MNIST files: image i is filled with 10 * i, its label is i % 10."""
    images = (np.arange(n, dtype=np.uint8)[:, None, None] * 10) * np.ones((1, 28, 28), np.uint8)
    ext = ".gz" if gz else ""
    write_idx(os.path.join(root, f"{prefix}-images-idx3-ubyte{ext}"), images, gz)
    write_idx(os.path.join(root, f"{prefix}-labels-idx1-ubyte{ext}"), np.arange(n) % 10, gz)
    return images

#----------------------------------------------------------------------------
# read_idx

@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_round_trip(tmp_path, gz):
    a = np.random.default_rng(0).integers(0, 256, (3, 4, 5)).astype(np.uint8)
    b = read_idx(write_idx(tmp_path / "a.idx", a, gz))
    assert b.dtype == np.uint8 and b.shape == (3, 4, 5) and (a == b).all()


def test_read_idx_other_dtypes(tmp_path):
    a = np.array([[-300, 2], [7, 30000]], dtype=np.int16)
    assert (read_idx(write_idx(tmp_path / "s.idx", a, code=0x0B)) == a).all()
    f = np.array([0.5, -1.25], dtype=np.float32)
    assert (read_idx(write_idx(tmp_path / "f.idx", f, code=0x0D)) == f).all()


def test_read_idx_errors(tmp_path):
    with pytest.raises(FewstepError, match=r"^IDX file not found: .*missing\.idx; check the path"):
        read_idx(tmp_path / "missing.idx")
    (tmp_path / "bad.idx").write_bytes(b"\x12\x34\x08\x01\x00\x00\x00\x01\x00")
    with pytest.raises(FewstepError, match=r"is not an IDX file \(bad magic number 12340801"):
        read_idx(tmp_path / "bad.idx")
    good = write_idx(tmp_path / "t.idx", np.zeros((4, 5), np.uint8)).read_bytes()
    (tmp_path / "t.idx").write_bytes(good[:-3])
    with pytest.raises(FewstepError, match=r"holds 17 data bytes but its header \(4, 5\) needs 20 \(truncated"):
        read_idx(tmp_path / "t.idx")
    (tmp_path / "t.gz").write_bytes(gzip.compress(good)[:-10])
    with pytest.raises(FewstepError, match=r"^corrupt gzip file .*t\.gz"):
        read_idx(tmp_path / "t.gz")
    with pytest.raises(FewstepError) as err:
        read_idx(tmp_path / "t.idx")
    assert "\n" not in str(err.value) and "download the file again" in str(err.value)

#----------------------------------------------------------------------------
# Fashion-MNIST

@pytest.mark.parametrize("gz", [True, False])
def test_fashion_mnist_tiny(tmp_path, gz):
    images = write_fashion(tmp_path, gz=gz)
    data = FashionMNIST("test", root=str(tmp_path))
    assert len(data) == 20 and data.shape == (1, 28, 28) and data.dim == 784
    assert data.num_classes == 10 and len(data.class_names) == 10 and data.class_names[9] == "Ankle boot"
    assert data.images.dtype == torch.uint8 and (data.images[:, 0].numpy() == images).all()
    assert data.labels.dtype == torch.long and data.labels.tolist() == [i % 10 for i in range(20)]
    batch = data.sample(64, torch.Generator().manual_seed(0))
    x, y = batch["x"], batch["class_labels"]
    assert x.shape == (64, 1, 28, 28) and x.dtype == torch.float32 and y.shape == (64,) and y.dtype == torch.long
    assert x.min() >= -1 and x.max() <= 1
    i = torch.round((x[:, 0, 0, 0] + 1) * 127.5 / 10).long()        # which image each draw is
    assert (y == i % 10).all()
    again = data.sample(64, torch.Generator().manual_seed(0))
    assert torch.equal(again["x"], x) and torch.equal(again["class_labels"], y)


def test_fashion_mnist_train_split_and_pad(tmp_path):
    write_fashion(tmp_path, prefix="train", n=5)
    data = make_dataset("fashion-mnist", root=str(tmp_path), pad_to=32)
    assert data.shape == (1, 32, 32) and data.images.shape == (5, 1, 32, 32) and data.dim == 1024
    x = data.sample(8, torch.Generator().manual_seed(1))["x"]
    assert (x[:, :, :2] == -1).all() and (x[:, :, -2:] == -1).all() and (x[:, :, :, :2] == -1).all()
    assert (data.images[:, :, 2:30, 2:30] == data.images[:, :, 2:3, 2:3]).all()
    with pytest.raises(FewstepError, match="pad_to must be an integer >= 28"):
        FashionMNIST(root=str(tmp_path), pad_to=20)
    with pytest.raises(FewstepError, match="unknown Fashion-MNIST split 'val'"):
        FashionMNIST("val", root=str(tmp_path))


def test_fashion_mnist_missing_files(tmp_path):
    with pytest.raises(FewstepError) as err:
        FashionMNIST("train", root=str(tmp_path))
    msg = str(err.value)
    assert "\n" not in msg and "train-images-idx3-ubyte[.gz] not found" in msg
    assert "apt-get install -y dataset-fashion-mnist" in msg and "root=" in msg


@pytest.mark.skipif(not os.path.isdir(REAL_ROOT), reason="Fashion-MNIST not installed (apt-get install -y dataset-fashion-mnist)")
def test_fashion_mnist_real_test_split():
    data = FashionMNIST("test")
    assert len(data) == 10000 and data.images.shape == (10000, 1, 28, 28) and data.num_classes == 10
    assert torch.bincount(data.labels, minlength=10).tolist() == [1000] * 10

#----------------------------------------------------------------------------
# ImageFolder

def save(path, size, mode="RGB", color=(200, 30, 60), fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path, fmt)
    return path


def test_folder_unlabelled_mixed_sizes(tmp_path):
    save(tmp_path / "a.png", (40, 20))
    save(tmp_path / "b.JPG", (13, 50), fmt="JPEG")
    save(tmp_path / "sub" / "c.jpeg", (64, 64), fmt="JPEG")
    (tmp_path / "notes.txt").write_text("not an image")
    data = ImageFolder(str(tmp_path), resolution=16)
    assert len(data) == 3 and data.shape == (3, 16, 16) and data.dim == 768
    assert data.images.dtype == torch.uint8 and data.labels is None and data.num_classes == 0
    assert data.class_names is None
    assert (data.images[0, :, 8, 8] == torch.tensor([200, 30, 60])).all()          # the PNG is lossless
    x = data.sample(5, torch.Generator().manual_seed(0))
    assert torch.is_tensor(x) and x.shape == (5, 3, 16, 16) and -1 <= x.min() and x.max() <= 1
    assert torch.equal(x, data.sample(5, torch.Generator().manual_seed(0)))


def test_folder_center_crop(tmp_path):
    image = Image.new("L", (30, 10), 0)
    image.paste(255, (10, 0, 20, 10))                                   # white centre square
    image.save(tmp_path / "wide.png")
    data = ImageFolder(str(tmp_path), resolution=8)
    assert data.shape == (1, 8, 8) and (data.images == 255).all()       # nothing bleeds in from the sides


def test_folder_class_subfolders(tmp_path):
    for name, n in [("dogs", 2), ("cats", 3)]:
        for i in range(n):
            save(tmp_path / name / f"{i}.png", (10, 12), mode="L", color=100)
    data = make_dataset("folder", root=str(tmp_path), resolution=4)
    assert data.class_names == ["cats", "dogs"] and data.num_classes == 2
    assert data.labels.tolist() == [0, 0, 0, 1, 1] and data.shape == (1, 4, 4)
    batch = data.sample(6, torch.Generator().manual_seed(0))
    assert batch["x"].shape == (6, 1, 4, 4) and batch["class_labels"].dtype == torch.long


def test_folder_channels(tmp_path):
    save(tmp_path / "g1.png", (8, 8), mode="L", color=50)
    save(tmp_path / "g2.png", (8, 8), mode="L", color=50)
    save(tmp_path / "c.png", (8, 8))
    assert ImageFolder(str(tmp_path), resolution=8).shape == (1, 8, 8)             # the majority is gray
    rgb = ImageFolder(str(tmp_path), resolution=8, channels=3)
    assert rgb.files == ["c.png", "g1.png", "g2.png"]
    assert rgb.shape == (3, 8, 8) and (rgb.images[1] == 50).all()
    with pytest.raises(FewstepError, match="channels must be 1 or 3"):
        ImageFolder(str(tmp_path), channels=2)
    for bad in (0, -3, 2.5, True):
        with pytest.raises(FewstepError, match="resolution must be a positive integer"):
            ImageFolder(str(tmp_path), resolution=bad)


def test_folder_errors(tmp_path):
    with pytest.raises(FewstepError, match=r"^image folder not found: .*nowhere; pass root="):
        ImageFolder(str(tmp_path / "nowhere"))
    (tmp_path / "readme.txt").write_text("x")
    with pytest.raises(FewstepError, match=r"^no images found in .*\(looked recursively for \.png, \.jpg, \.jpeg"):
        ImageFolder(str(tmp_path))
    save(tmp_path / "ok.png", (8, 8))
    (tmp_path / "broken.jpg").write_bytes(b"definitely not a jpeg")
    with pytest.raises(FewstepError, match=r"^cannot read image .*broken\.jpg .*remove the file") as err:
        ImageFolder(str(tmp_path), resolution=8)
    assert "\n" not in str(err.value)
    good = save(tmp_path / "cut.png", (64, 64)).read_bytes()
    (tmp_path / "broken.jpg").unlink()
    (tmp_path / "cut.png").write_bytes(good[: len(good) // 2])
    with pytest.raises(FewstepError, match=r"^cannot read image .*cut\.png"):
        ImageFolder(str(tmp_path), resolution=8, channels=3)


def test_registry():
    assert {"fashion-mnist", "folder", "gmm", "moons"} <= set(DATASETS)
    from fewstep.data import GaussianMixture  # noqa: F401  (still exported)
    with pytest.raises(ValueError, match="unknown dataset"):
        make_dataset("nope")
