"""Preconditioning: wrappers that turn a raw network F(x_in, c_noise, **cond) into a denoiser or a
consistency function with the contract `model(x, sigma, **cond)` in VE coordinates.

The raw network never sees sigma itself, only c_in x and c_noise (EDM's `EDMPrecond` design).
"""

import torch
from torch import nn

from .schedules import SIGMA_DATA, SIGMA_MIN


def append_dims(v, ndim):
    """Reshape a per-sample vector (B,) (or a scalar) so it broadcasts against a (B, ...) tensor."""
    v = torch.as_tensor(v)
    return v.reshape(v.shape + (1,) * (ndim - v.ndim)) if v.ndim else v


def as_sigma(sigma, x):
    """sigma as a (B,) tensor in x's dtype and device."""
    sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    return sigma.expand(x.shape[0]) if sigma.ndim == 0 else sigma.reshape(x.shape[0])


def edm_scalings(sigma, sigma_data=SIGMA_DATA):
    """EDM's c_skip, c_out, c_in, c_noise (seed 004, EDM column of the parameterization table)."""
    c_skip = sigma_data ** 2 / (sigma ** 2 + sigma_data ** 2)
    c_out = sigma * sigma_data / (sigma ** 2 + sigma_data ** 2).sqrt()
    c_in = 1 / (sigma_data ** 2 + sigma ** 2).sqrt()
    return c_skip, c_out, c_in, sigma.log() / 4


def consistency_scalings(sigma, sigma_data=SIGMA_DATA, sigma_min=SIGMA_MIN):
    """The consistency boundary scalings (seed 004, CM column): c_skip = sd^2 / ((t - eps)^2 + sd^2),
    c_out = sd (t - eps) / sqrt(sd^2 + t^2). At t = eps they are exactly 1 and 0, so f(x, eps) = x."""
    c_skip = sigma_data ** 2 / ((sigma - sigma_min) ** 2 + sigma_data ** 2)
    c_out = sigma_data * (sigma - sigma_min) / (sigma_data ** 2 + sigma ** 2).sqrt()
    return c_skip, c_out


class EDMPrecond(nn.Module):
    """D(x, sigma) = c_skip x + c_out F(c_in x, c_noise): the teacher's denoiser (EDM)."""

    def __init__(self, net, sigma_data=SIGMA_DATA):
        super().__init__()
        self.net, self.sigma_data = net, sigma_data

    def forward(self, x, sigma, **cond):
        sigma = as_sigma(sigma, x)
        c_skip, c_out, c_in, c_noise = (append_dims(c, x.ndim) for c in edm_scalings(sigma, self.sigma_data))
        return c_skip * x + c_out * self.net(c_in * x, c_noise.flatten(), **cond)


class VPPrecond(nn.Module):
    """An eps-prediction network on a VP process, presented as a VE denoiser (seed 004's eps -> x0).

    With s = sigma_t / alpha_t and x = x_t / alpha_t: the network sees x_t = x / sqrt(1 + s^2) and
    c_noise = t / T for the discrete process or t in [0, 1] for the continuous one, and
    D(x, s) = x - s eps_hat. DDPM's eps loss and DDIM/DDPM sampling then run through D unchanged.
    """

    def __init__(self, net, process):
        super().__init__()
        self.net, self.process = net, process

    def c_noise(self, sigma):
        t = self.process.t_of_ve_sigma(sigma.double())
        return (t / self.process.T if hasattr(self.process, "T") else t).to(sigma.dtype)

    def forward(self, x, sigma, **cond):
        sigma = as_sigma(sigma, x)
        c_in = append_dims(1 / (1 + sigma ** 2).sqrt(), x.ndim)
        eps = self.net(c_in * x, self.c_noise(sigma), **cond)
        return x - append_dims(sigma, x.ndim) * eps


class ConsistencyPrecond(nn.Module):
    """A consistency function f(x, sigma) with the boundary condition f(x, sigma_min) = x (seed 000).

    boundary="scalings" (option 2, used in the papers): f = c_skip x + c_out F(c_in x, c_noise) with
    `consistency_scalings`. boundary="switch" (option 1): f = x where sigma <= sigma_min, otherwise the
    EDM-preconditioned free-form network.
    """

    def __init__(self, net, sigma_data=SIGMA_DATA, sigma_min=SIGMA_MIN, boundary="scalings"):
        super().__init__()
        if boundary not in ("scalings", "switch"):
            raise ValueError(f"unknown consistency boundary {boundary!r}; choose 'scalings' or 'switch'")
        self.net, self.sigma_data, self.sigma_min, self.boundary = net, sigma_data, sigma_min, boundary

    def forward(self, x, sigma, **cond):
        sigma = as_sigma(sigma, x)
        edm_c_skip, edm_c_out, c_in, c_noise = edm_scalings(sigma, self.sigma_data)
        F = self.net(append_dims(c_in, x.ndim) * x, c_noise, **cond)
        if self.boundary == "scalings":
            c_skip, c_out = consistency_scalings(sigma, self.sigma_data, self.sigma_min)
            return append_dims(c_skip, x.ndim) * x + append_dims(c_out, x.ndim) * F
        free = append_dims(edm_c_skip, x.ndim) * x + append_dims(edm_c_out, x.ndim) * F
        return torch.where(append_dims(sigma <= self.sigma_min, x.ndim), x, free)



class TrajectoryPrecond(nn.Module):
    """A consistency trajectory model (CTM; seeds 003 and 004): G(x, t, s) = (s / t) x + (1 - s / t) g(x, t, s),
    with g preconditioned like EDM's denoiser at t and the raw network conditioned on both times (its scalar
    condition "s", embedded as c_noise(s) = ln(s) / 4). G(x, t, t) = x by construction; g(x, t, t) is a
    denoiser, so a call without s returns it and every denoiser sampler fits; G(x, t, sigma_min) is a
    consistency function ("time 0" in the seed's formulas is the boundary sigma_min here)."""

    def __init__(self, net, sigma_data=SIGMA_DATA, sigma_min=SIGMA_MIN):
        super().__init__()
        if "s" not in (getattr(net, "scalar_emb", None) or getattr(net, "map_scalar", None) or {}):
            raise ValueError("a trajectory model's network must embed the second time s: build it with scalars=('s',)")
        self.net, self.sigma_data, self.sigma_min = net, sigma_data, sigma_min

    def g(self, x, t, s, **cond):
        c_skip, c_out, c_in, c_noise = (append_dims(c, x.ndim) for c in edm_scalings(t, self.sigma_data))
        return c_skip * x + c_out * self.net(c_in * x, c_noise.flatten(), s=s.log() / 4, **cond)

    def forward(self, x, sigma, s=None, **cond):
        t = as_sigma(sigma, x)
        if s is None:
            return self.g(x, t, t, **cond)
        s = as_sigma(s, x)
        ratio = append_dims(s / t, x.ndim)
        return ratio * x + (1 - ratio) * self.g(x, t, s, **cond)

    def consistency(self, x, sigma, **cond):
        """f(x, t) = G(x, t, sigma_min)."""
        return self(x, sigma, s=torch.full_like(as_sigma(sigma, x), self.sigma_min), **cond)


def lcm_scalings(t, timestep_scaling=10.0, sigma_data=0.5):
    """LCM's boundary scalings on the discrete timestep t, 0 at the boundary (seed 004, "Parameterization for
    more general noise schedule"; Luo et al. 2023): with u = timestep_scaling t, c_skip = sd^2 / (u^2 + sd^2) and
    c_out = u / sqrt(u^2 + sd^2), so c_skip(0) = 1 and c_out(0) = 0 exactly."""
    u = timestep_scaling * t
    return sigma_data ** 2 / (u ** 2 + sigma_data ** 2), u / (u ** 2 + sigma_data ** 2).sqrt()


class LCMPrecond(VPPrecond):
    """A latent consistency model (seed 004): f(z, w, c, t) = c_skip(t) z + c_out(t) (z - sigma_t eps_hat) / alpha_t
    with the eps-prediction network of `VPPrecond` on a discrete VP process and `lcm_scalings`. Called in VE
    coordinates like every model (x = z / alpha_t, sigma = sigma_t / alpha_t); t is the process's timestep of
    sigma counted from 0 (its first step, t = 1 here, is LCM's boundary: f(z, 0) = z); its output is the clean
    estimate. The guidance scale w and class labels are conditions of the network (`w` a scalar embedding)."""

    def __init__(self, net, process, timestep_scaling=10.0, sigma_data=0.5):
        super().__init__(net, process)
        self.timestep_scaling, self.sigma_data = timestep_scaling, sigma_data

    def forward(self, x, sigma, **cond):
        sigma = as_sigma(sigma, x)
        x0 = super().forward(x, sigma, **cond)
        t = self.process.t_of_ve_sigma(sigma.double()).round() - 1       # the discrete timestep, 0-based
        c_skip, c_out = (append_dims(c.to(x.dtype), x.ndim) for c in lcm_scalings(t, self.timestep_scaling, self.sigma_data))
        alpha = append_dims(1 / (1 + sigma ** 2).sqrt(), x.ndim)
        return c_skip * (alpha * x) + c_out * x0
