"""Named conditions: the inputs of a network besides x and the noise level, each with its embedding,
its null value (what "no condition" means, for classifier-free guidance) and its training-time dropout.

- ClassLabel: an integer class y; embedded by a table of num_classes + 1 rows, the last one the null
  label (seed 002's classifier-free guidance trains it by dropping labels with probability p).
- Scalar: a real number per sample, such as LCM's guidance scale w (seed 004: a Fourier embedding added
  to the time embedding) or CTM's second time s; null=None when it has no "absent" value.

A batch is a tensor, or {"x": data, **conditions, "extras": {...}}: the conditions go to the network,
the extras (noise/sample pairs, couplings) only to the method (methods.common.split_batch).
"""

import torch
from torch import nn

from .nets.embeddings import ScalarEmbedding


class ClassLabel:
    name = "class_labels"

    def __init__(self, num_classes):
        self.num_classes = num_classes
        self.null = num_classes                 # the extra row of the embedding table

    def embedding(self, width):
        return nn.Embedding(self.num_classes + 1, width)

    def null_like(self, values):
        return torch.full_like(values, self.null)

    def drop(self, values, p, generator=None):
        """Each value replaced by the null one with probability p (the mask drawn on the CPU generator)."""
        if p <= 0:
            return values
        drop = torch.rand(values.shape, generator=generator) < p
        return torch.where(drop.to(values.device), self.null_like(values), values)


class Scalar(ClassLabel):
    """A real-valued condition, embedded as Fourier features of the value (frequencies ~ N(0, scale^2))
    followed by a linear layer; `null` is the value that stands for "absent" (None: it is always given)."""

    def __init__(self, name, null=None, scale=1.0):
        self.name, self.null, self.scale = name, null, scale

    def embedding(self, width):
        return ScalarEmbedding(width, self.scale)

    def null_like(self, values):
        if self.null is None:
            raise ValueError(f"condition {self.name!r} has no null value, so it cannot be dropped or guided")
        return torch.full_like(values, float(self.null))
