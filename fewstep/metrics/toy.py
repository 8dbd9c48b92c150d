"""Distances and consistency errors for low-dimensional (toy) data.

- `sliced_wasserstein`: the sliced Wasserstein-p distance (Rabin et al. 2011, "Wasserstein
  barycenter and its application to texture mixing"; Bonneel et al. 2015), the 2-D sample distance
  fewstep reports in its tables (`sample_distance`).
- `mmd`: squared maximum mean discrepancy with a sum of RBF kernels (Gretton et al. 2012,
  "A kernel two-sample test", JMLR 13).
- `true_consistency_function`, `consistency_error`: how far a learned one-step map f(x, t) is from
  the consistency function of the PF-ODE of the data (seed 000, Definition of f), using the
  closed-form oracles of `fewstep.data.toy2d.GaussianMixture`.
- `mode_stats`: which modes of a Gaussian mixture the samples reach and with what mass (modes hit,
  total-variation error of the mode weights, share off every mode): the 2-D mixture measure of the
  distillation issue, for seed 003's claims about mode collapse.

All arithmetic is float64; every random draw comes from a `generator`, and when none is given a
fixed-seed one, so each metric is a deterministic function of its inputs.
"""

import math

import torch

from ..schedules import RHO, SIGMA_MIN, karras_sigmas

DEFAULT_SEED = 0
MMD_BANDWIDTHS = (0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0)   # RBF length scales, for data of std ~0.5


def _generator(generator, seed=DEFAULT_SEED):
    return torch.Generator().manual_seed(seed) if generator is None else generator


def _flat64(x):
    x = torch.as_tensor(x).detach().cpu().double()
    return x.reshape(x.shape[0], -1)

#----------------------------------------------------------------------------
# Sliced Wasserstein distance (Rabin et al. 2011).


def random_directions(n, dim, generator=None):
    """n directions uniform on the unit sphere S^{dim-1}, as an (n, dim) float64 tensor."""
    theta = torch.randn(n, dim, generator=_generator(generator), dtype=torch.float64)
    return theta / theta.norm(dim=1, keepdim=True)


def wasserstein_1d(u, v, p=2):
    """W_p^p between the 1-D empirical measures in the rows of u (L, n) and v (L, m); returns (L,).

    W_p^p = int_0^1 |F_u^{-1}(q) - F_v^{-1}(q)|^p dq is computed exactly: for n == m it is the mean
    of |sorted u - sorted v|^p; otherwise both quantile functions are piecewise constant on the
    merged grid {i/n} U {j/m}, and each piece is weighted by its length.
    """
    u, v = u.sort(dim=-1).values, v.sort(dim=-1).values
    n, m = u.shape[-1], v.shape[-1]
    if n == m:
        return ((u - v).abs() ** p).mean(-1)
    levels = torch.cat([torch.arange(1, n + 1, dtype=torch.float64) / n,
                        torch.arange(1, m + 1, dtype=torch.float64) / m]).sort().values
    width = torch.diff(levels, prepend=levels.new_zeros(1))                      # (n + m,)
    mid = levels - width / 2                                                      # inside each piece
    iu = (mid * n).long().clamp(max=n - 1)
    iv = (mid * m).long().clamp(max=m - 1)
    return ((u[..., iu] - v[..., iv]).abs() ** p * width).sum(-1)


def sliced_wasserstein(x, y, n_projections=256, generator=None, p=2):
    """Sliced Wasserstein-p distance SW_p(x, y) = (E_theta W_p^p(theta.x, theta.y))^(1/p).

    theta is uniform on the unit sphere (Rabin et al. 2011, Bonneel et al. 2015); the expectation
    is a Monte Carlo mean over `n_projections` directions drawn from `generator` (default: a fixed
    seed, so the metric is deterministic and two calls compare on the same directions). x (n, d)
    and y (m, d) may have different sizes: the 1-D distances are exact between the empirical
    quantile functions (`wasserstein_1d`). Cost: two sorts of (n_projections, n) float64 values.
    Returns a float in the units of the data.
    """
    x, y = _flat64(x), _flat64(y)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y must have the same dimension, got {x.shape[1]} and {y.shape[1]}")
    theta = random_directions(n_projections, x.shape[1], generator)             # (L, d)
    return wasserstein_1d(theta @ x.T, theta @ y.T, p).mean().item() ** (1 / p)

#----------------------------------------------------------------------------
# Maximum mean discrepancy (Gretton et al. 2012).


def _kernel_sum(x, y, bandwidths, block=256):
    """sum_{i,j} sum_h exp(-|x_i - y_j|^2 / (2 h^2)), in row blocks so memory is O(block * m)."""
    total = x.new_zeros(())
    for xb in x.split(block):
        d2 = torch.cdist(xb, y).square_()                                         # (block, m)
        for h in bandwidths:
            total += torch.exp(d2 * (-0.5 / h ** 2)).sum()
    return total


def _subsample(x, max_n, generator):
    if max_n is None or x.shape[0] <= max_n:
        return x
    return x[torch.randperm(x.shape[0], generator=generator)[:max_n]]


def mmd(x, y, bandwidths=MMD_BANDWIDTHS, unbiased=False, max_n=2048, generator=None):
    """Squared MMD between samples x (n, d) and y (m, d) with the kernel k = sum_h RBF_h.

    k(a, b) = sum_h exp(-|a - b|^2 / (2 h^2)) over the length scales `bandwidths`, so k(a, a) equals
    len(bandwidths). The default is the biased (V-statistic) estimate
    MMD_b^2 = mean k(x, x') + mean k(y, y') - 2 mean k(x, y) (Gretton et al. 2012, Eq. 5): it is
    the squared distance between the empirical kernel mean embeddings, so it is >= 0 and exactly 0
    for identical sets, and it overestimates MMD^2 by O(1/n). `unbiased=True` gives the U-statistic
    (Eq. 3, diagonal terms left out), which can be negative. Each set is first subsampled without
    replacement to at most `max_n` points (drawn from `generator`, default a fixed seed) to bound
    the O(n m) time; kernel sums run in row blocks, so memory stays O(256 m) at any size.
    """
    gen = _generator(generator)
    x, y = _subsample(_flat64(x), max_n, gen), _subsample(_flat64(y), max_n, gen)
    n, m, k0 = x.shape[0], y.shape[0], len(bandwidths)
    kxx, kyy, kxy = _kernel_sum(x, x, bandwidths), _kernel_sum(y, y, bandwidths), _kernel_sum(x, y, bandwidths)
    if unbiased:
        value = (kxx - n * k0) / (n * (n - 1)) + (kyy - m * k0) / (m * (m - 1)) - 2 * kxy / (n * m)
    else:
        value = kxx / n ** 2 + kyy / m ** 2 - 2 * kxy / (n * m)
    return value.item()

#----------------------------------------------------------------------------
# Consistency-function error against the PF-ODE of known data (seed 000).


def _heun_to_sigma_min(D, x, t, sigma_min, steps, rho):
    from ..sampling import sample_heun      # lazy: the metrics import without the samplers
    sigmas = karras_sigmas(steps, sigma_min, t, rho)                              # t -> sigma_min, no 0
    return sample_heun(D, x, sigmas)


def true_consistency_function(D, x, t, sigma_min=SIGMA_MIN, steps=512, rho=RHO):
    """f(x, t): the end at sigma_min of the PF-ODE trajectory dx/dsigma = (x - D(x, sigma)) / sigma
    through x at noise level t (seed 000, Eq. 3 and the definition of the consistency function).

    D is the exact denoiser (e.g. `GaussianMixture.denoiser`). The ODE is solved in float64 by EDM's
    Heun method (Karras et al. 2022, Algorithm 1) on `steps` Karras levels from t down to sigma_min.
    t is a scalar or a (batch,) tensor; rows sharing a value of t share one solve. Returns x's dtype.
    """
    x64 = x.detach().double()
    t = torch.as_tensor(t, dtype=torch.float64).flatten()
    if t.numel() == 1:
        out = _heun_to_sigma_min(D, x64, t.item(), sigma_min, steps, rho)
    else:
        out = torch.empty_like(x64)
        for value in t.unique():
            rows = t == value
            out[rows] = _heun_to_sigma_min(D, x64[rows], value.item(), sigma_min, steps, rho)
    return out.to(x.dtype)


def _reference_consistency(data, x, t, sigma_min, steps):
    """Closed form for one Gaussian (`data.consistency_function`), else a fine Heun solve."""
    weights = getattr(data, "weights", None)
    if weights is not None and len(weights) == 1 and hasattr(data, "consistency_function"):
        return data.consistency_function(x.double(), t, sigma_min).double()
    if not hasattr(data, "denoiser"):
        raise TypeError(f"{type(data).__name__} has no exact denoiser; consistency_error needs one")
    return true_consistency_function(data.denoiser, x.double(), t, sigma_min, steps).double()


@torch.no_grad()
def consistency_error(f_model, data, n=4096, t=80.0, sigma_min=SIGMA_MIN, generator=None, reference_steps=512):
    """Root mean squared Euclidean error sqrt(E ||f_model(x_t, t) - f(x_t, t)||^2) of a one-step map.

    x_t = x_0 + t z with x_0 ~ data, z ~ N(0, I) (n points from `generator`, default a fixed seed);
    f is the true consistency function of the data's PF-ODE ending at sigma_min: closed form for a
    single Gaussian, else `true_consistency_function` with `data.denoiser` and `reference_steps`
    Heun levels. f_model(x, sigma) receives x_t in float32 and sigma as a (n,) float32 tensor.
    """
    gen = _generator(generator)
    x0 = data.sample(n, generator=gen).double()
    x_t = (x0 + t * torch.randn(x0.shape, generator=gen, dtype=torch.float64)).float()
    sigma = torch.full((n,), float(t), dtype=x_t.dtype)
    pred = torch.as_tensor(f_model(x_t, sigma)).double().reshape(n, -1)
    ref = _reference_consistency(data, x_t, t, sigma_min, reference_steps).reshape(n, -1)
    return math.sqrt((pred - ref).square().sum(1).mean().item())


#----------------------------------------------------------------------------
# Mode coverage and mode weights on a Gaussian mixture (seed 003: does distillation collapse modes?).


def _nearest_mode(x, mixture, radius):
    """Index of the nearest mean per sample, or -1 where that mean is farther than radius * s_k."""
    # exact differences, not the |x|^2 + |mu|^2 - 2 x.mu expansion: a point at mu_k is at distance 0
    d = torch.cdist(x, mixture.means, compute_mode="donot_use_mm_for_euclid_dist")   # (n, K) float64
    dist, k = d.min(dim=1)
    return torch.where(dist <= radius * mixture.stds[k], k, -1), d


def mode_stats(samples, mixture, radius=3.0, min_share=0.01):
    """Mode coverage of `samples` (n, d) against a `GaussianMixture` (means mu_k, stds s_k, weights pi_k).

    The 2-D mixture measure of the distillation issue: it tests seed 003's claims that a one- or
    few-step sampler may drop modes (mode collapse) or misweight them, which a sample distance such
    as `sample_distance` mixes with the shape error inside each mode. Returns a dict of floats:

    - "modes_hit": the fraction of modes k hit, i.e. with at least `min_share` of ALL n samples within
      `radius` standard deviations of mu_k (Euclidean |x - mu_k| <= radius * s_k), so a few strays
      do not count as covering a mode;
    - "weight_tv": 0.5 * sum_k |p_hat_k - pi_k|, where a sample is assigned to its nearest mean if it
      lies within radius * s_k of it, and p_hat_k is mode k's share of the assigned samples; 1.0 (the
      largest value) when no sample is assigned;
    - "off_mode": the fraction of samples assigned to no mode (excluded from weight_tv).

    All in float64, vectorised over samples: memory O(n K).
    """
    x, (K, dim) = torch.as_tensor(samples), mixture.means.shape
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] != dim:
        raise ValueError(f"samples must be (n >= 1, {dim}), got {tuple(x.shape)}")
    if not (0 < radius < math.inf and 0 < min_share <= 1):
        raise ValueError(f"need radius > 0 and 0 < min_share <= 1, got radius={radius!r}, min_share={min_share!r}")
    x, n = _flat64(x), x.shape[0]
    assigned, d = _nearest_mode(x, mixture, radius)
    # a mode is hit by the samples near it, assigned elsewhere or not; compare shares, not count >=
    # min_share * n, so the boundary is exact (1 / 100 >= 0.01)
    share = (d <= radius * mixture.stds[None]).sum(0).double() / n               # (K,)
    counts = torch.bincount(assigned[assigned >= 0], minlength=K).double()
    total = counts.sum().item()
    tv = 1.0 if total == 0 else 0.5 * (counts / total - mixture.weights).abs().sum().item()
    return {"modes_hit": (share >= min_share).double().mean().item(), "weight_tv": tv,
            "off_mode": (n - total) / n}


def sample_distance(samples, data_or_reference, n=None, generator=None, n_projections=256):
    """Sliced Wasserstein-2 distance from `samples` to the data: fewstep's 2-D table metric.

    `data_or_reference` is either a tensor of reference samples or a dataset with
    `sample(n, generator)`, from which n fresh points are drawn (default: as many as `samples`;
    `generator` default: seed 1, not 0, so that samples drawn with seed 0 are not compared with
    themselves). Projections use the fixed default seed. The noise floor is the distance between two
    independent sets of that size (about 0.04 for 4000 points of `gmm_ring`).
    """
    if hasattr(data_or_reference, "sample"):
        n = samples.shape[0] if n is None else n
        reference = data_or_reference.sample(n, generator=_generator(generator, DEFAULT_SEED + 1))
    else:
        reference = data_or_reference
    return sliced_wasserstein(samples, reference, n_projections=n_projections)
