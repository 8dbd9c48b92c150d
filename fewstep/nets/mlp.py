"""A small residual MLP with a noise embedding, for 2-D (or any flat) data."""

import torch
from torch import nn

from .embeddings import ScalarEmbedding, check_sizes, embed_scalars, FourierEmbedding, PositionalEmbedding


class Block(nn.Module):
    """h + W2 dropout(silu(W1 norm(h) + emb))."""

    def __init__(self, width, dropout):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc1, self.fc2 = nn.Linear(width, width), nn.Linear(width, width)
        self.dropout = nn.Dropout(dropout)

    def forward(self, h, emb):
        return h + self.fc2(self.dropout(nn.functional.silu(self.fc1(self.norm(h)) + emb)))


class MLP(nn.Module):
    """Raw network F(x_in, c_noise, class_labels=None) -> same shape as x_in."""

    def __init__(self,
        dim             = 2,            # Data dimensionality.
        width           = 128,          # Hidden width.
        depth           = 3,            # Number of residual blocks.
        emb             = "fourier",    # Noise embedding: "fourier" or "positional".
        emb_scale       = 1.0,          # Fourier frequency scale (rad/2pi per unit c_noise), or positional multiplier.
        dropout         = 0.0,          # Dropout inside the blocks (iCT uses more than CM).
        num_classes     = 0,            # Class conditioning: 0 = none; label num_classes is the null label.
        scalars         = (),           # Names of real-valued conditions (fewstep.conditions.Scalar) it embeds.
    ):
        super().__init__()
        check_sizes(dropout, dim=dim, width=width, depth=depth)
        self.dim, self.num_classes = dim, num_classes
        if emb == "fourier":
            self.emb = FourierEmbedding(width, emb_scale)
        elif emb == "positional":
            self.emb = PositionalEmbedding(width, emb_scale)
        else:
            raise ValueError(f"unknown noise embedding {emb!r}; choose 'fourier' or 'positional'")
        self.emb_mlp = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        self.label_emb = nn.Embedding(num_classes + 1, width) if num_classes else None
        self.scalar_emb = nn.ModuleDict({name: ScalarEmbedding(width) for name in scalars}) if scalars else None
        self.inp = nn.Linear(dim, width)
        self.blocks = nn.ModuleList(Block(width, dropout) for _ in range(depth))
        self.out_norm = nn.LayerNorm(width)
        self.out = nn.Linear(width, dim)
        nn.init.zeros_(self.out.weight)         # F = 0 at init: the wrapper's skip path alone (as EDM)
        nn.init.zeros_(self.out.bias)

    def forward(self, x, c_noise, class_labels=None, **scalars):
        shape = x.shape
        emb = self.emb(c_noise)
        if self.label_emb is not None:
            labels = torch.full((shape[0],), self.num_classes, device=x.device) if class_labels is None else class_labels
            emb = emb + self.label_emb(labels)
        if self.scalar_emb is not None or scalars:
            emb = emb + embed_scalars(self.scalar_emb or {}, scalars, shape[0])
        emb = self.emb_mlp(emb)
        h = self.inp(x.reshape(shape[0], -1))
        for block in self.blocks:
            h = block(h, emb)
        return self.out(nn.functional.silu(self.out_norm(h))).reshape(shape)
