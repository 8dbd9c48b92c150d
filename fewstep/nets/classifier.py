"""A small convolutional classifier: the feature network for FD / precision-recall on Fashion-MNIST, and,
with `noise_conditional=True`, the noise-conditional classifier p(y | x, sigma) of classifier guidance."""

import torch
from torch import nn

from .embeddings import FourierEmbedding


class Classifier(nn.Module):
    """logits = head(features(x)); features are the penultimate activations (feature_dim wide)."""

    def __init__(self,
        in_channels         = 1,        # Image channels.
        num_classes         = 10,       # Output classes.
        channels            = (32, 64, 128),  # Width of each stage; every stage halves the resolution.
        feature_dim         = 128,      # Width of the feature layer that FD and precision/recall use.
        noise_conditional   = False,    # Take sigma (c_noise = log(sigma) / 4) through a Fourier embedding.
    ):
        super().__init__()
        self.num_classes = num_classes
        layers, c_in = [], in_channels
        for c in channels:
            layers += [nn.Conv2d(c_in, c, 3, padding=1), nn.GroupNorm(8, c), nn.SiLU(),
                       nn.Conv2d(c, c, 3, padding=1, stride=2), nn.GroupNorm(8, c), nn.SiLU()]
            c_in = c
        self.body = nn.Sequential(*layers)
        self.emb = nn.Sequential(FourierEmbedding(c_in, scale=1.0), nn.Linear(c_in, c_in)) if noise_conditional else None
        self.proj = nn.Linear(c_in, feature_dim)
        self.head = nn.Linear(feature_dim, num_classes)

    def features(self, x, sigma=None):
        h = self.body(x).mean(dim=(2, 3))
        if self.emb is not None:
            if sigma is None:
                raise ValueError("a noise-conditional classifier needs sigma")
            h = h + self.emb(torch.as_tensor(sigma, dtype=x.dtype, device=x.device).expand(x.shape[0]).log() / 4)
        return nn.functional.silu(self.proj(h))

    def forward(self, x, sigma=None):
        return self.head(self.features(x, sigma))
