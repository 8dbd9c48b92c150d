"""Datasets. Each has `sample(n, generator)`; `make_dataset(name, **kwargs)` builds one by name."""
from .images import FashionMNIST, ImageFolder, TintedFashionMNIST, read_idx  # noqa: F401
from .latent import Latents  # noqa: F401
from .toy2d import TOY_DATASETS, GaussianMixture  # noqa: F401

DATASETS = {
    **TOY_DATASETS,                  # 2-D toys generated in-process (fewstep.data.toy2d)
    "fashion-mnist": FashionMNIST,   # 1 x 28 x 28, 10 classes; split=, root=, pad_to=
    "fashion-mnist-rgb": TintedFashionMNIST,  # 3 x 28 x 28: garments tinted one color each; split=, seed=
    "folder": ImageFolder,           # any folder of PNG/JPEG; root=, resolution=, channels=
    "latents": Latents,              # an image dataset encoded by an autoencoder; autoencoder=, source=, source_options=
}
IMAGE_DATASETS = {"fashion-mnist", "fashion-mnist-rgb", "folder", "latents"}   # (C, H, W) samples; the rest are flat


def make_dataset(name="gmm", **kwargs):
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {sorted(DATASETS)}")
    return DATASETS[name](**kwargs)
