"""Noise processes and prediction parameterizations (seed 004, "The Forward Process").

Every process has the transition kernel x_t = alpha_t x_0 + sigma_t eps. fewstep's samplers and
losses all work in the VE ("EDM") coordinates x / alpha_t with noise level sigma = sigma_t / alpha_t,
where the PF-ODE is dx/dsigma = (x - D(x, sigma)) / sigma (seed 000, Karras et al.). A VP network is
brought into those coordinates by `precond.VPPrecond`, so one sampler serves both processes.
"""

import math

import torch

from .precond import EDMPrecond, VPPrecond
from .sampling import initial_noise, vp_sigmas
from .schedules import append_zero, karras_sigmas

#----------------------------------------------------------------------------
# Conversions between eps / x0 / v / score predictions (seed 004, "Parameterizations in DPMs").
# All take x_t and the process's (alpha_t, sigma_t) at that time; tensors broadcast.

PREDICTIONS = ("eps", "x0", "v", "score")


def to_x0(pred, kind, x_t, alpha, sigma):
    """Data prediction x0 from a network output of the given kind."""
    if kind == "x0":
        return pred
    if kind == "eps":
        return (x_t - sigma * pred) / alpha
    if kind == "v":                                     # v = alpha eps - sigma x0
        return (alpha * x_t - sigma * pred) / (alpha ** 2 + sigma ** 2)   # denominator is 1 for VP
    if kind == "score":                                 # score = -eps / sigma
        return (x_t + sigma ** 2 * pred) / alpha
    raise ValueError(f"unknown prediction kind {kind!r}; choose one of {PREDICTIONS}")


def from_x0(x0, kind, x_t, alpha, sigma):
    """The prediction of the given kind that corresponds to the data prediction x0."""
    if kind == "x0":
        return x0
    eps = (x_t - alpha * x0) / sigma
    if kind == "eps":
        return eps
    if kind == "v":
        return alpha * eps - sigma * x0
    if kind == "score":
        return -eps / sigma
    raise ValueError(f"unknown prediction kind {kind!r}; choose one of {PREDICTIONS}")


#----------------------------------------------------------------------------
# Processes. Each maps its own time t to (alpha_t, sigma_t) and to the VE noise level sigma_t/alpha_t.


class VE:
    """Variance exploding (EDM): alpha_t = 1, sigma_t = t (seed 004, "Noise Schedule and Parameterization")."""

    name = "ve"

    def alpha(self, t):
        return torch.ones_like(torch.as_tensor(t, dtype=torch.float64))

    def sigma(self, t):
        return torch.as_tensor(t, dtype=torch.float64)

    def ve_sigma(self, t):
        return self.sigma(t)

    def t_of_ve_sigma(self, s):
        return torch.as_tensor(s, dtype=torch.float64)

    def config(self):
        return {"name": self.name}

    # What a denoiser on this process samples with (fewstep.kinds.DENOISER asks).
    default_sampler = "heun"

    def denoiser(self, net, sigma_data):
        model = EDMPrecond(net, sigma_data)
        model.process = self
        return model

    def sampling_grid(self, steps, sigma_min, sigma_max, rho, sigma_start=None):
        """EDM's Karras grid of `steps` levels from sigma_start (default sigma_max), then 0."""
        return append_zero(karras_sigmas(steps, sigma_min, sigma_start or sigma_max, rho))

    def prior_scale(self, sigma):
        return float(sigma)

    def prior(self, shape, sigma, *, generator=None, device=None):
        """x = sigma z: N(0, sigma^2 I) (seed 000: x_T ~ N(0, T^2 I))."""
        return initial_noise(shape, sigma, generator=generator, device=device)


class RectifiedFlow(VE):
    """The rectified-flow interpolation X_t = t X1 + (1 - t) X0, t in [0, 1], X1 ~ N(0, I) (seed 003; Liu et al.
    2023), seen in VE coordinates: x = X_t / (1 - t) = X0 + sigma X1 with sigma = t / (1 - t). A velocity field
    v(X_t, t) and a denoiser are then one model, v = (X_t - D(x, sigma)) / t, and Euler on the flow is Euler
    (DDIM) in these coordinates, so every VE sampler runs on it unchanged. Its grid is uniform in t."""

    name = "flow"
    default_sampler = "euler"

    def alpha(self, t):
        return 1 - torch.as_tensor(t, dtype=torch.float64)

    def sigma(self, t):
        return torch.as_tensor(t, dtype=torch.float64)

    def ve_sigma(self, t):
        t = torch.as_tensor(t, dtype=torch.float64)
        return t / (1 - t)

    def t_of_ve_sigma(self, s):
        s = torch.as_tensor(s, dtype=torch.float64)
        return s / (1 + s)

    def sampling_grid(self, steps, sigma_min, sigma_max, rho, sigma_start=None):
        """`steps` Euler steps uniform in t from t(sigma_start or sigma_max) down to t = 0."""
        if steps < 1:
            raise ValueError(f"a rectified flow samples with steps >= 1, got {steps}")
        t = torch.linspace(float(self.t_of_ve_sigma(sigma_start or sigma_max)), 0, steps + 1, dtype=torch.float64)
        return self.ve_sigma(t)


class HalvingGrid(VE):
    """The noise grid of a progressive-distillation round (seed 002; Salimans & Ho 2022): every (N0/N)-th
    level of the Karras grid of N0 steps, so the student's one step spans two of its teacher's. A run
    samples with Euler (DDIM, in VE coordinates) on its own N steps, or on any divisor of N0."""

    name = "halving"
    default_sampler = "euler"

    def __init__(self, N=32, N0=64):
        self.N, self.N0 = int(N), int(N0)

    def config(self):
        return {"name": self.name, "N": self.N, "N0": self.N0}

    def sampling_grid(self, steps, sigma_min, sigma_max, rho, sigma_start=None):
        if sigma_start is not None:                 # editing starts mid-way: the Karras grid below sigma_start
            return super().sampling_grid(steps, sigma_min, sigma_max, rho, sigma_start)
        if steps < 1 or self.N0 % steps:
            raise ValueError(f"a progressive-distillation run samples on its grid of {self.N} steps (or a divisor of "
                             f"N0 = {self.N0}); got {steps} steps")
        return super().sampling_grid(self.N0, sigma_min, sigma_max, rho)[::self.N0 // steps]


class VPDiscrete:
    """DDPM's discrete VP process: alpha_bar_t = prod_{i<=t} (1 - beta_i), t = 1..T (seed 002); betas linear
    (DDPM) or "scaled-linear" (Stable Diffusion's, the latent teacher LCM distills: seed 004).

    alpha_t = sqrt(alpha_bar_t), sigma_t = sqrt(1 - alpha_bar_t); the VE noise level of step t is
    sqrt((1 - alpha_bar_t) / alpha_bar_t).
    """

    name = "vp-discrete"
    SCHEDULES = ("linear", "scaled-linear")

    def __init__(self, T=1000, beta_start=1e-4, beta_end=0.02, schedule="linear"):
        if schedule not in self.SCHEDULES:
            raise ValueError(f"unknown beta schedule {schedule!r}; choose one of {self.SCHEDULES}")
        self.T, self.beta_start, self.beta_end, self.schedule = int(T), float(beta_start), float(beta_end), schedule
        if schedule == "linear":                        # DDPM's betas
            self.betas = torch.linspace(beta_start, beta_end, self.T, dtype=torch.float64)
        else:                                           # Stable Diffusion's: linear in sqrt(beta) (0.00085 .. 0.012)
            self.betas = torch.linspace(beta_start ** 0.5, beta_end ** 0.5, self.T, dtype=torch.float64) ** 2
        self.alpha_bars = torch.cumprod(1 - self.betas, dim=0)         # index t-1 holds alpha_bar_t
        self.ve_sigmas = ((1 - self.alpha_bars) / self.alpha_bars).sqrt()

    def _ab(self, t):
        t = torch.as_tensor(t).long()
        return self.alpha_bars[t - 1]

    def alpha(self, t):
        return self._ab(t).sqrt()

    def sigma(self, t):
        return (1 - self._ab(t)).sqrt()

    def ve_sigma(self, t):
        return self.ve_sigmas[torch.as_tensor(t).long() - 1]

    def t_of_ve_sigma(self, s):
        """The (real-valued) step index whose VE noise level is s, by interpolation in log sigma."""
        s = torch.as_tensor(s, dtype=torch.float64)
        log_s = self.ve_sigmas.log()
        idx = torch.searchsorted(log_s, s.log().clamp(log_s[0], log_s[-1])).clamp(1, self.T - 1)
        lo, hi = log_s[idx - 1], log_s[idx]
        w = (s.log().clamp(log_s[0], log_s[-1]) - lo) / (hi - lo)
        return idx + w                                                  # 1-based: idx-1 -> t = idx

    def strided_timesteps(self, S):
        """S of the T steps, evenly spaced as in the strided schedule tau_1 < ... < tau_S = T (seed 002)."""
        if not 1 <= S <= self.T:
            raise ValueError(f"the strided schedule needs 1 <= S <= T={self.T}, got S={S}")
        return torch.linspace(self.T, 1, S).round().long().flip(0).unique()

    def lcm_timesteps(self, k, steps=None):
        """LCM's timesteps (seed 004, "skipping timesteps"): the training grid 1 < k < 2k < ... < T (its one
        DDIM step spans k timesteps; the first step is the boundary), ascending; with `steps`, the sampling
        schedule of `steps` of those from T down, evenly spaced as LCM's scheduler picks them."""
        if not (isinstance(k, int) and 1 <= k <= self.T and self.T % k == 0):
            raise ValueError(f"the skipping step k must divide T = {self.T}, got k={k!r}")
        grid = torch.arange(k, self.T + 1, k)
        if steps is None:
            return torch.cat([torch.ones(1, dtype=torch.long), grid]).unique()
        if not 1 <= steps <= len(grid):
            raise ValueError(f"an LCM trained with k={k} samples with 1 to {len(grid)} steps, got {steps}")
        picks = torch.linspace(0, len(grid), steps + 1, dtype=torch.float64)[:-1].floor().long()
        return grid.flip(0)[picks]

    def config(self):
        return {"name": self.name, "T": self.T, "beta_start": self.beta_start, "beta_end": self.beta_end,
                "schedule": self.schedule}

    # What a denoiser on this process samples with (fewstep.kinds.DENOISER asks).
    default_sampler = "ddim"

    def denoiser(self, net, sigma_data=None):
        return VPPrecond(net, self)

    def sampling_grid(self, steps, sigma_min, sigma_max, rho, sigma_start=None):
        """The strided schedule of `steps` of the T steps (seed 002); from sigma_start (editing), the Karras
        grid between the process's own smallest level and sigma_start."""
        if sigma_start is None:
            return vp_sigmas(self, steps)
        return append_zero(karras_sigmas(steps, float(self.ve_sigma(1)), sigma_start, rho))

    def prior_scale(self, sigma):
        return math.sqrt(1 + float(sigma) ** 2)

    def prior(self, shape, sigma, *, generator=None, device=None):
        """Pure VP noise x_T ~ N(0, I) seen in VE coordinates: sqrt(1 + sigma^2) z (seed 002)."""
        return initial_noise(shape, sigma, generator=generator, vp=True, device=device)


class VPContinuous:
    """Continuous VP SDE, dx = -1/2 beta(t) x dt + sqrt(beta(t)) dw with linear beta(t), t in [0, 1].

    From seed 004's alpha_t = exp(int_0^t f) with f = -beta/2: alpha_t = exp(-1/2 (beta_min t +
    1/2 (beta_max - beta_min) t^2)), sigma_t = sqrt(1 - alpha_t^2).
    """

    name = "vp"

    def __init__(self, beta_min=0.1, beta_max=20.0):
        self.beta_min, self.beta_max = float(beta_min), float(beta_max)

    def _log_alpha(self, t):
        t = torch.as_tensor(t, dtype=torch.float64)
        return -0.5 * (self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t ** 2)

    def alpha(self, t):
        return self._log_alpha(t).exp()

    def sigma(self, t):
        return (-torch.expm1(2 * self._log_alpha(t))).sqrt()

    def ve_sigma(self, t):
        return torch.expm1(-2 * self._log_alpha(t)).sqrt()

    def t_of_ve_sigma(self, s):
        # Solve 1/2 (beta_max - beta_min) t^2 + beta_min t - log(1 + s^2) = 0 for t >= 0.
        s = torch.as_tensor(s, dtype=torch.float64)
        a, b, c = 0.5 * (self.beta_max - self.beta_min), self.beta_min, -torch.log1p(s ** 2)
        return (-b + (b * b - 4 * a * c).sqrt()) / (2 * a) if a > 0 else -c / b

    def config(self):
        return {"name": self.name, "beta_min": self.beta_min, "beta_max": self.beta_max}


PROCESSES = {"ve": VE, "vp": VPContinuous, "vp-discrete": VPDiscrete, "flow": RectifiedFlow, "halving": HalvingGrid}


def make_process(name="ve", **kwargs):
    if name not in PROCESSES:
        raise ValueError(f"unknown process {name!r}; choose one of {sorted(PROCESSES)}")
    return PROCESSES[name](**kwargs)

