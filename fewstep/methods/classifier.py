"""The noise-conditional classifier of classifier guidance (seed 002: "trained a classifier f_phi(y | x_t, t)
on noisy images"). The model is the raw classifier itself (kind CLASSIFIER): logits = net(x, sigma)."""

import torch

from ..kinds import CLASSIFIER
from ..precond import append_dims
from ..processes import VE
from .base import Method
from .common import randn_like, split_batch


class NoisyClassifierLoss(Method):
    """Cross-entropy of net(x + sigma n, sigma) against y with ln sigma ~ N(P_mean, P_std^2), the noise
    levels the EDM teacher trains on, so the classifier's gradient is meaningful wherever guidance asks."""

    produces, process = CLASSIFIER, VE

    def __init__(self, P_mean=-1.2, P_std=1.2):
        self.P_mean, self.P_std = P_mean, P_std

    def __call__(self, net, batch, *, generator=None, **_):
        x, cond = split_batch(batch)
        if "class_labels" not in cond:
            raise ValueError("the classifier needs labelled data; train it with --set cond=true")
        sigma = (torch.randn(x.shape[0], generator=generator).to(x) * self.P_std + self.P_mean).exp()
        logits = net(x + append_dims(sigma, x.ndim) * randn_like(x, generator), sigma)
        return torch.nn.functional.cross_entropy(logits, cond["class_labels"])
