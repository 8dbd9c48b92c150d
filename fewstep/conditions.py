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


class Condition:
    """A named network input with a null value ("absent", for classifier-free guidance) and dropout to it.
    The networks embed it (nets: num_classes for class labels, scalars for real values)."""
    name, null = None, None

    def null_like(self, values):
        if self.null is None:
            raise ValueError(f"condition {self.name!r} has no null value, so it cannot be dropped or guided")
        return torch.full_like(values, self.null)

    def drop(self, values, p, generator=None):
        """Each value replaced by the null one with probability p (the mask drawn on the CPU generator)."""
        if p <= 0:
            return values
        drop = torch.rand(values.shape, generator=generator) < p
        return torch.where(drop.to(values.device), self.null_like(values), values)


class ClassLabel(Condition):
    """An integer class y in 0..num_classes-1; the null label is num_classes (the embedding's extra row)."""
    name = "class_labels"

    def __init__(self, num_classes):
        self.num_classes = self.null = num_classes


class Scalar(Condition):
    """A real value per sample (LCM's guidance scale w, CTM's s); null=None when it is always given."""

    def __init__(self, name, null=None):
        self.name, self.null = name, (None if null is None else float(null))
