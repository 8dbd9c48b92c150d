"""Diffusion teachers: EDM denoising score matching (VE) and DDPM eps-prediction (VP)."""

import torch

from ..kinds import DENOISER
from ..precond import append_dims
from ..processes import VE, VPDiscrete
from ..schedules import SIGMA_DATA
from .base import Method
from .common import randn_like, split_batch


class EDMLoss(Method):
    """EDM's denoising score matching: ln sigma ~ N(P_mean, P_std^2), weight (sigma^2 + sd^2)/(sigma sd)^2,
    loss = weight ||D(y + sigma n, sigma) - y||^2 (seed 004, "x_start" objective with EDM's weighting)."""

    produces, process = DENOISER, VE

    def __init__(self, P_mean=-1.2, P_std=1.2, sigma_data=SIGMA_DATA):
        self.P_mean, self.P_std, self.sigma_data = P_mean, P_std, sigma_data

    def __call__(self, net, batch, *, generator=None, **_):
        y, cond = split_batch(batch)
        rnd = torch.randn(y.shape[0], generator=generator).to(y)
        sigma = (rnd * self.P_std + self.P_mean).exp()
        weight = (sigma ** 2 + self.sigma_data ** 2) / (sigma * self.sigma_data) ** 2
        n = randn_like(y, generator) * append_dims(sigma, y.ndim)
        D = net(y + n, sigma, **cond)
        return (weight * (D - y).square().flatten(1).sum(1)).mean()


class DDPMLoss(Method):
    """DDPM's eps-prediction loss E_{t, eps} ||eps_theta(x_t, t) - eps||^2 with t ~ U{1..T}
    (seed 004, "noise" objective; seed 002). Works through VPPrecond's D: eps_hat = (x - D) / s."""

    produces, process = DENOISER, VPDiscrete        # the process takes T, beta_start, beta_end from the options

    def __init__(self, T=1000, beta_start=1e-4, beta_end=0.02, schedule="linear"):
        self.process = VPDiscrete(T, beta_start, beta_end, schedule)

    def __call__(self, net, batch, *, generator=None, **_):
        y, cond = split_batch(batch)
        t = torch.randint(1, self.process.T + 1, (y.shape[0],), generator=generator)
        s = append_dims(self.process.ve_sigma(t).to(y), y.ndim)
        eps = randn_like(y, generator)
        x = y + s * eps                                             # = x_t / alpha_t
        eps_hat = (x - net(x, s.flatten(), **cond)) / s
        return (eps_hat - eps).square().flatten(1).sum(1).mean()
