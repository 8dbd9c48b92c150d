"""Datasets. Each has `sample(n, generator)`; `make_dataset(name, **kwargs)` builds one by name."""
from .toy2d import DATASETS, GaussianMixture, make_dataset  # noqa: F401
