"""Noise-level grids and training curricula (seeds 000 and 004).

Grids are float64 tensors; callers cast them where they meet a network.
"""

import math

import torch

SIGMA_MIN, SIGMA_MAX, RHO, SIGMA_DATA = 0.002, 80.0, 7.0, 0.5    # EDM / CM defaults (seed 004)


def karras_sigmas(n, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX, rho=RHO):
    """n noise levels from sigma_max down to sigma_min, evenly spaced in sigma^(1/rho) (Karras et al.)."""
    if n < 1:
        raise ValueError(f"a sigma grid needs at least 1 point, got {n}")
    if not 0 < sigma_min <= sigma_max:
        raise ValueError(f"need 0 < sigma_min <= sigma_max, got {sigma_min}, {sigma_max}")
    if n == 1:
        return torch.tensor([sigma_max], dtype=torch.float64)
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return (hi + ramp * (lo - hi)) ** rho


def cm_timesteps(N, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX, rho=RHO):
    """The CM discretization t_1 = eps < t_2 < ... < t_N = T (seed 000, Algorithms 2-3), ascending."""
    if N < 2:
        raise ValueError(f"a consistency discretization needs N >= 2 points, got N={N}")
    return karras_sigmas(N, sigma_min, sigma_max, rho).flip(0)


def append_zero(sigmas):
    return torch.cat([sigmas, sigmas.new_zeros(1)])


def sample_karras_uniform(shape, generator=None, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX, rho=RHO):
    """Continuous-time analogue of n ~ U[1, N-1] on the Karras grid: uniform in sigma^(1/rho)."""
    u = torch.rand(shape, generator=generator, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return (lo + u * (hi - lo)) ** rho

#----------------------------------------------------------------------------
# Consistency training curricula.


def ct_N(k, K, s0=2, s1=150):
    """CT's discretization schedule N(k) = ceil(sqrt(k/K ((s1+1)^2 - s0^2) + s0^2) - 1) + 1 (seed 000, 004)."""
    return math.ceil(math.sqrt(k / K * ((s1 + 1) ** 2 - s0 ** 2) + s0 ** 2) - 1) + 1


def ct_mu(k, K, s0=2, s1=150, mu0=0.9):
    """CT's EMA decay schedule mu(k) = exp(s0 log(mu0) / N(k)) (seed 000, Algorithm 3)."""
    return math.exp(s0 * math.log(mu0) / ct_N(k, K, s0, s1))


def ict_N(k, K, s0=10, s1=1280):
    """iCT's exponential curriculum N(k) = min(s0 2^floor(k/K'), s1) + 1,
    K' = floor(K / (log2 floor(s1/s0) + 1)) (seed 004, "Improved Techniques (4)")."""
    K_prime = math.floor(K / (math.log2(math.floor(s1 / s0)) + 1))
    return min(s0 * 2 ** math.floor(k / max(K_prime, 1)), s1) + 1


def ict_index_probs(sigmas, P_mean=-1.1, P_std=2.0):
    """iCT's lognormal index distribution over i = 1..N-1 of an ascending grid sigma_1 < ... < sigma_N:
    p(i) proportional to erf((log sigma_{i+1} - P_mean)/(sqrt2 P_std)) - erf((log sigma_i - P_mean)/(sqrt2 P_std))
    (seed 004). Returns N-1 probabilities summing to 1; entry i-1 is p(i)."""
    cdf = torch.erf((sigmas.double().log() - P_mean) / (math.sqrt(2) * P_std))
    p = cdf[1:] - cdf[:-1]
    return p / p.sum()


def pseudo_huber_c(d):
    """iCT's pseudo-Huber constant c = 0.00054 sqrt(d) for data dimensionality d (seed 004)."""
    return 0.00054 * math.sqrt(d)
