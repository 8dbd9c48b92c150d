"""Noise-level embeddings shared by the raw networks: c_noise (B,) -> features (B, num_channels)."""

import math

import torch
from torch import nn


def check_sizes(dropout=0.0, **sizes):
    """ValueError (one line) unless every size is a positive integer and dropout a probability below 1."""
    for name, v in sizes.items():
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    if not 0 <= dropout < 1:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")


class FourierEmbedding(nn.Module):
    """Random Fourier features of c_noise with frequencies ~ N(0, scale^2) (iCT: a smaller scale makes
    the embedding less sensitive to the noise level, seed 004). Frequencies are a fixed buffer drawn
    from a seeded generator, so every network built with the same config has the same embedding."""

    def __init__(self, num_channels, scale=16.0, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("freqs", torch.randn(num_channels // 2, generator=g) * scale)

    def forward(self, c):
        x = c.to(self.freqs.dtype)[:, None] * (2 * math.pi * self.freqs)[None]
        return torch.cat([x.cos(), x.sin()], dim=1)


class PositionalEmbedding(nn.Module):
    """Transformer sinusoidal embedding of scale * c_noise (DDPM's timestep embedding)."""

    def __init__(self, num_channels, scale=1000.0, max_positions=10000):
        super().__init__()
        self.num_channels, self.scale, self.max_positions = num_channels, scale, max_positions

    def forward(self, c):
        half = self.num_channels // 2
        freqs = (1 / self.max_positions) ** (torch.arange(half, dtype=torch.float32, device=c.device) / half)
        x = (self.scale * c.float())[:, None] * freqs[None]
        return torch.cat([x.cos(), x.sin()], dim=1)


class ScalarEmbedding(nn.Module):
    """A real-valued condition per sample (LCM's guidance scale w, CTM's s): Fourier features of the
    value, then a linear layer; added to the noise embedding (seed 004's w-embedding)."""

    def __init__(self, num_channels, scale=1.0, seed=1):
        super().__init__()
        self.fourier, self.linear = FourierEmbedding(num_channels, scale, seed), nn.Linear(num_channels, num_channels)

    def forward(self, values):
        return self.linear(self.fourier(values.reshape(-1)))


def embed_scalars(embeddings, scalars, batch):
    """The sum of the named scalar conditions' embeddings; one line for a missing or unknown condition
    (a method's batch extras must never reach the network)."""
    unknown = sorted(set(scalars) - set(embeddings))
    if unknown:
        raise ValueError(f"the network has no condition(s) {unknown}; it takes {sorted(embeddings) or 'none'} "
                         "(add them with net.scalars, or keep method-only inputs in the batch's extras)")
    missing = sorted(set(embeddings) - set(scalars))
    if missing:
        raise ValueError(f"the network needs the condition(s) {missing}; pass them with the batch or cond=")
    return sum(embeddings[name](torch.as_tensor(v).expand(batch)) for name, v in scalars.items())
