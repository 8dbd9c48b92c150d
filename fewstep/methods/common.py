"""Pieces shared by the training methods: batches and distance functions d(x, y)."""

import torch

from ..schedules import pseudo_huber_c


def randn_like(x, generator=None):
    """Standard normal noise shaped like x, drawn from `generator` on the CPU (the training loop's
    generators live there so runs are reproducible on any device) and moved to x's device and dtype."""
    return torch.randn(x.shape, generator=generator).to(x)


def split_batch(batch):
    """A batch is a data tensor or a dict {"x": tensor, **cond, "extras": {...}}; returns (x, cond): the
    network's conditions only. A method reads its extras (pairs, couplings) with batch_extras."""
    if isinstance(batch, dict):
        cond = {k: v for k, v in batch.items() if k not in ("x", "extras")}
        return batch["x"], cond
    return batch, {}


def batch_extras(batch):
    """What the batch carries for the method alone ({} when nothing)."""
    return batch.get("extras", {}) if isinstance(batch, dict) else {}


class FeatureDistance:
    """||phi(x) - phi(y)||^2 through a feature network phi the user supplies (an LPIPS-style metric;
    seed 000 finds LPIPS best for CD on images). phi's parameters are frozen."""

    def __init__(self, feature_net):
        self.phi = feature_net.requires_grad_(False)

    def __call__(self, x, y):
        return (self.phi(x) - self.phi(y)).square().flatten(1).sum(1)


def make_distance(name, feature_net=None, c=None):
    """Per-sample distance d(x, y) -> (B,) for CD/CT (seed 000: L2, L1, LPIPS; seed 004: pseudo-Huber
    sqrt(||x - y||^2 + c^2) - c with c = 0.00054 sqrt(d), d the data dimensionality, unless c is given)."""
    if name == "l2":
        return lambda x, y: (x - y).square().flatten(1).sum(1)
    if name == "l1":
        return lambda x, y: (x - y).abs().flatten(1).sum(1)
    if name == "pseudo-huber":
        return lambda x, y: _pseudo_huber(x - y, pseudo_huber_c(x[0].numel()) if c is None else c)
    if name in ("feature", "lpips"):
        if feature_net is None:
            raise ValueError("distance 'feature' needs feature_net: a network mapping samples to features")
        return FeatureDistance(feature_net)
    raise ValueError(f"unknown distance {name!r}; choose 'l2', 'l1', 'pseudo-huber' or 'feature'")


def _pseudo_huber(diff, c):
    return (diff.square().flatten(1).sum(1) + c ** 2).sqrt() - c


#----------------------------------------------------------------------------
# The adversarial terms of ADD and DMD2 (seed 003): hinge losses and the R1 penalty.


def hinge_d_loss(disc, real, fake, cond, r1=0.0):
    """The discriminator's hinge loss E[relu(1 - D(real))] + E[relu(1 + D(fake))], plus the R1 penalty
    (r1 / 2) E ||grad_x D(real)||^2 that keeps it smooth on the data (Mescheder et al. 2018)."""
    real = real.detach().requires_grad_(r1 > 0)
    d_real = disc(real, **cond)
    loss = (1 - d_real).relu().mean() + (1 + disc(fake.detach(), **cond)).relu().mean()
    if r1 > 0:
        grad, = torch.autograd.grad(d_real.sum(), real, create_graph=True)
        loss = loss + r1 / 2 * grad.square().flatten(1).sum(1).mean()
    return loss


def hinge_g_loss(disc, fake, cond):
    """The generator's hinge loss -E[D(fake)]."""
    return -disc(fake, **cond).mean()
