"""Closed-form answers the tests compare against (Gaussian data: every sampler is affine in x - mu).

For one Gaussian N(mu, s^2 I) the ideal denoiser is D(x, sigma) = mu + g(sigma) (x - mu) with
g = s^2 / (s^2 + sigma^2), so each sampler step maps x - mu to a (x - mu) + sqrt(q) z and the sample
variance after any schedule follows v <- a^2 v + q exactly (`propagate`).
"""

import math

import torch

from fewstep.data.toy2d import GaussianMixture
from fewstep.sampling import sample_heun
from fewstep.schedules import karras_sigmas


def as_denoiser(gm):
    """GaussianMixture.denoiser with the sampler contract D(x, sigma, **cond)."""
    return lambda x, sigma, **cond: gm.denoiser(x, sigma)


def as_consistency_function(gm, sigma_min):
    """The exact consistency function f(x, t) of one Gaussian (seed 000) with the same contract."""
    return lambda x, t, **cond: gm.consistency_function(x, t, sigma_min)


def gaussian_denoiser(mean=0.0, std=0.5):
    """D for N(mean, std^2 I) on tensors of any shape (B, ...), sigma of shape (B,)."""
    def D(x, sigma, **cond):
        sigma = sigma.reshape(-1, *([1] * (x.ndim - 1)))
        return mean + std ** 2 / (std ** 2 + sigma ** 2) * (x - mean)
    return D


def heun_reference(D, x, sigma_max, sigma_min, steps=2048):
    """A fine float64 Heun solve of the PF-ODE from sigma_max to sigma_min (no final 0)."""
    return sample_heun(D, x.double(), karras_sigmas(steps + 1, sigma_min, sigma_max))


def propagate(v, affine_steps):
    """Variance after the affine steps (a, q): v <- a^2 v + q."""
    for a, q in affine_steps:
        v = a * a * v + q
    return v


def ddim_affine(sigmas, eta, s2):
    """Seed 002's VP DDIM step, written from abar = 1 / (1 + sigma^2), in VE coordinates."""
    for st, ss in zip(sigmas[:-1], sigmas[1:]):
        ab_t, ab_s = 1 / (1 + st ** 2), 1 / (1 + ss ** 2)
        var = eta ** 2 * (1 - ab_s) / (1 - ab_t) * (1 - ab_t / ab_s)                # sigma_t^2 (VP)
        g = s2 / (s2 + st ** 2)                                # x0_hat - mu = g (x - mu); eps_hat = (1-g)(x - mu)/st
        # x_s^VP = sqrt(ab_s) x0_hat + sqrt(1 - ab_s - var) eps_hat + sqrt(var) z, divided by sqrt(ab_s)
        yield g + math.sqrt(max(1 - ab_s - var, 0) / ab_s) * (1 - g) / st, var / ab_s


def heun_churn_affine(sigmas, S_churn, s2):
    """EDM's Algorithm 2 (Heun with churn, S_noise = 1, no S_tmin/S_tmax window)."""
    n = len(sigmas) - 1
    for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:]):
        hat = sigma * (1 + min(S_churn / n, math.sqrt(2) - 1))
        yield 1.0, hat ** 2 - sigma ** 2                                            # churn noise
        k1 = hat / (s2 + hat ** 2)                                                  # d = k1 (x - mu)
        a = 1 + (sigma_next - hat) * k1
        if sigma_next > 0:
            a = 1 + (sigma_next - hat) * (k1 + sigma_next / (s2 + sigma_next ** 2) * a) / 2
        yield a, 0.0


def langevin_affine(levels, n_steps, step_scale, s2, denoise=True):
    """Song & Ermon's annealed Langevin dynamics on N(mu, (s^2 + sigma^2) I), then D(x, sigma_L)."""
    for sigma in levels:
        delta = step_scale * sigma ** 2 / levels[-1] ** 2
        for _ in range(n_steps):
            yield 1 - delta / (2 * (s2 + sigma ** 2)), delta
    if denoise:
        yield s2 / (s2 + levels[-1] ** 2), 0.0


class LabelledMixture:
    """Two 2-D Gaussians whose samples carry their component as the class label: a class-conditional
    dataset small enough for training tests (register it with `use_labelled_mixture`)."""

    num_classes, dim = 2, 2

    def __init__(self):
        self.gm = GaussianMixture(torch.tensor([[-0.5, 0.0], [0.5, 0.0]]), [0.1])

    def sample(self, n, generator=None):
        x, k = self.gm.sample(n, generator, labels=True)
        return {"x": x, "class_labels": k}


def use_labelled_mixture(monkeypatch):
    """Make --data labelled (a LabelledMixture) available for this test."""
    from fewstep.data import DATASETS
    monkeypatch.setitem(DATASETS, "labelled", LabelledMixture)
