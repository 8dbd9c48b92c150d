"""Image datasets held in memory: Fashion-MNIST (IDX files) and any folder of PNG/JPEG files.

All images are kept as one uint8 tensor `images` (N, C, H, W) with values 0..255 and `labels` a long
tensor (N,) (None when unlabelled). `sample(n, generator)` draws n indices with replacement and
returns {"x": float (n, C, H, W) in [-1, 1], "class_labels": long (n,)}, or only the float tensor for
unlabelled data. Nothing is cached on disk.
"""

import gzip
import os

import numpy as np
import torch

from ..errors import FewstepError

IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]

#----------------------------------------------------------------------------
# IDX files (the MNIST format): 2 zero bytes, a dtype code, the number of dimensions, then each
# dimension as a big-endian uint32, then the values in big-endian row-major order.

def _read_bytes(path):
    """The file's bytes, gunzipped when it starts with the gzip magic."""
    if not os.path.isfile(path):
        raise FewstepError(f"IDX file not found: {path}; check the path or download the file again")
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError) as e:
        raise FewstepError(f"corrupt gzip file {path} ({e}); download the file again") from None


def read_idx(path):
    """Read an IDX file (plain or gzipped) into a numpy array of its dtype (uint8 for code 0x08)."""
    data = _read_bytes(path)
    if len(data) < 4 or data[:2] != b"\x00\x00" or data[2] not in IDX_DTYPES:
        raise FewstepError(f"{path} is not an IDX file (bad magic number {data[:4].hex() or 'empty'}, "
                           "expected 0000<type><ndim>); pass an MNIST-format file or download it again")
    ndim, offset = data[3], 4 + 4 * data[3]
    if len(data) < offset:
        raise FewstepError(f"IDX file {path} is truncated inside its header; download the file again")
    shape = tuple(int(d) for d in np.frombuffer(data, ">u4", count=ndim, offset=4))
    dtype = np.dtype(IDX_DTYPES[data[2]])
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) - offset != expected:
        raise FewstepError(f"IDX file {path} holds {len(data) - offset} data bytes but its header {shape} "
                           f"needs {expected} (truncated or corrupt); download the file again")
    return np.frombuffer(data, dtype, offset=offset).reshape(shape).astype(dtype.newbyteorder("="))

#----------------------------------------------------------------------------
# The shared in-memory dataset.

class InMemoryImages:
    """uint8 images (N, C, H, W) and optional labels, sampled with replacement as [-1, 1] floats."""

    def __init__(self, images, labels=None, class_names=None):
        self.images = images                                    # uint8 (N, C, H, W), 0..255.
        self.labels = labels                                    # long (N,), or None when unlabelled.
        self.class_names = class_names                          # list of str, or None.
        self.num_classes = len(class_names) if class_names else 0
        self.shape = tuple(images.shape[1:])                    # (C, H, W).
        self.dim = int(np.prod(self.shape))

    def __len__(self):
        return len(self.images)

    def sample(self, n, generator=None):
        """n images drawn with replacement by indices from `generator`."""
        idx = torch.randint(len(self.images), (n,), generator=generator)
        x = self.images[idx].float() / 127.5 - 1
        return {"x": x, "class_labels": self.labels[idx]} if self.num_classes else x

#----------------------------------------------------------------------------
# Fashion-MNIST.

def _find_idx(root, name, split):
    """The path of `name` or `name.gz` under root; a FewstepError saying how to install it if absent."""
    for path in (os.path.join(root, name + ".gz"), os.path.join(root, name)):
        if os.path.isfile(path):
            return path
    raise FewstepError(f"Fashion-MNIST {split} file {name}[.gz] not found in {root}; install it with "
                       "`apt-get update && apt-get install -y dataset-fashion-mnist` or pass root=DIR holding it")


def _pad(images, size):
    """Pad (N, C, H, W) uint8 images with 0 (that is -1 once scaled) to size x size, centred."""
    if not isinstance(size, int) or isinstance(size, bool) or size < max(images.shape[2:]):
        raise FewstepError(f"pad_to must be an integer >= {max(images.shape[2:])}, got {size!r}; "
                           "pass e.g. pad_to=32 or leave it out")
    dh, dw = size - images.shape[2], size - images.shape[3]
    return torch.nn.functional.pad(images, (dw // 2, dw - dw // 2, dh // 2, dh - dh // 2), value=0)


class FashionMNIST(InMemoryImages):
    """Fashion-MNIST (60000 train / 10000 test images, 1 x 28 x 28, 10 classes) from its IDX files."""

    def __init__(self,
        split   = "train",              # "train" or "test" (the t10k files).
        root    = FASHION_MNIST_ROOT,   # Folder with {train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz].
        pad_to  = None,                 # Pad 28 x 28 to pad_to x pad_to with -1 (32 suits deep U-Nets).
    ):
        root = os.path.expanduser(root)
        prefix = {"train": "train", "test": "t10k", "t10k": "t10k"}.get(split)
        if prefix is None:
            raise FewstepError(f"unknown Fashion-MNIST split {split!r}; pass split='train' or split='test'")
        images = read_idx(_find_idx(root, f"{prefix}-images-idx3-ubyte", split))
        labels = read_idx(_find_idx(root, f"{prefix}-labels-idx1-ubyte", split))
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels) or images.dtype != np.uint8:
            raise FewstepError(f"Fashion-MNIST {split} files in {root} do not match (images {images.shape}, "
                               f"labels {labels.shape}); reinstall them or pass the right root=")
        images = torch.from_numpy(images)[:, None]
        if pad_to is not None:
            images = _pad(images, pad_to)
        super().__init__(images, torch.from_numpy(labels).long(), list(FASHION_MNIST_CLASSES))

def hsv_to_rgb(h, s, v):
    """Colors (..., 3) in [0, 1] from hue, saturation, value in [0, 1] (the standard hexcone formula)."""
    n = torch.tensor([5.0, 3.0, 1.0])
    k = (n + h[..., None] * 6) % 6
    return v[..., None] - (v * s)[..., None] * torch.minimum(k, 4 - k).clamp(0, 1)


class TintedFashionMNIST(InMemoryImages):
    """An RGB set built in-process for colorization: each Fashion-MNIST garment tinted with one color
    drawn per image (hue uniform, saturation in [0.5, 1], full value), rgb = gray x color, 3 x 28 x 28.
    The colors depend only on `seed` and the split, so the set is the same on every machine."""

    def __init__(self, split="train", root=FASHION_MNIST_ROOT, seed=0):
        gray = FashionMNIST(split, root)
        g = torch.Generator().manual_seed(seed + (split != "train"))
        n = len(gray.images)
        color = hsv_to_rgb(torch.rand(n, generator=g), 0.5 + 0.5 * torch.rand(n, generator=g), torch.ones(n))
        rgb = gray.images.float() * color[:, :, None, None]             # (N, 1, H, W) x (N, 3, 1, 1)
        super().__init__(rgb.round().to(torch.uint8), gray.labels, gray.class_names)

#----------------------------------------------------------------------------
# A folder of PNG/JPEG files.

def _list_images(root):
    """Relative paths of the PNG/JPEG files under root (recursive, sorted)."""
    found = []
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        found += [os.path.relpath(os.path.join(folder, f), root) for f in sorted(files)
                  if f.lower().endswith(IMAGE_EXTENSIONS)]
    return found


def _unreadable(path, e):
    return FewstepError(f"cannot read image {path} ({e}); remove the file or replace it with a valid PNG/JPEG")


def _is_gray(path):
    """Whether the file's own mode is grayscale (reads the header only)."""
    from PIL import Image
    try:
        with Image.open(path) as image:
            return image.mode in ("1", "L", "LA", "I", "I;16", "F")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise _unreadable(path, e) from None


def _load_square(path, resolution, channels):
    """Centre-crop to a square, resize with antialiased bicubic filtering, return uint8 (C, H, W)."""
    from PIL import Image, ImageOps
    try:
        with Image.open(path) as image:
            image = ImageOps.exif_transpose(image).convert("L" if channels == 1 else "RGB")
            w, h = image.size
            s = min(w, h)
            box = ((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)
            image = image.crop(box).resize((resolution, resolution), Image.Resampling.BICUBIC)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise _unreadable(path, e) from None
    array = np.asarray(image, dtype=np.uint8).reshape(resolution, resolution, channels)
    return torch.from_numpy(array.copy()).permute(2, 0, 1)


class ImageFolder(InMemoryImages):
    """Every .png/.jpg/.jpeg under root, centre-cropped and resized to resolution x resolution.
    Labelled by top-level subfolder (sorted names) when every image sits in one, else unlabelled."""

    def __init__(self,
        root,                   # Folder searched recursively; file extensions are case-insensitive.
        resolution  = 32,       # Output height and width in pixels.
        channels    = None,     # 1 (grayscale) or 3 (RGB); None: what most files are.
    ):
        if not isinstance(resolution, int) or isinstance(resolution, bool) or resolution < 1:
            raise FewstepError(f"resolution must be a positive integer, got {resolution!r}; pass e.g. resolution=32")
        if channels not in (None, 1, 3) or isinstance(channels, bool):
            raise FewstepError(f"channels must be 1 or 3 (or None to infer), got {channels!r}")
        root = os.path.expanduser(str(root))
        if not os.path.isdir(root):
            raise FewstepError(f"image folder not found: {root}; pass root= an existing folder of PNG/JPEG files")
        rel = _list_images(root)
        if not rel:
            raise FewstepError(f"no images found in {root} (looked recursively for {', '.join(IMAGE_EXTENSIONS)}, "
                               "any case); add images or pass another root=")
        paths = [os.path.join(root, p) for p in rel]
        channels = channels or (1 if sum(map(_is_gray, paths)) > len(paths) / 2 else 3)   # the majority
        images = torch.stack([_load_square(p, resolution, channels) for p in paths])
        labels, class_names = None, None
        if all(os.sep in p for p in rel):
            folders = [p.split(os.sep, 1)[0] for p in rel]
            class_names = sorted(set(folders))
            index = {name: i for i, name in enumerate(class_names)}
            labels = torch.tensor([index[f] for f in folders], dtype=torch.long)
        super().__init__(images, labels, class_names)
        self.root, self.files = root, rel
