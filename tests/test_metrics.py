"""Numeric contracts of fewstep.metrics.toy against closed-form answers."""

import math

import pytest
import torch

from fewstep.data.toy2d import gaussian, gmm_ring
from fewstep.metrics.toy import (consistency_error, mmd, random_directions, sample_distance,
                                 sliced_wasserstein, true_consistency_function, wasserstein_1d)

SIGMA_MIN = 0.002


def normal(n, mean=(0.0, 0.0), seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, len(mean), generator=g, dtype=torch.float64) + torch.tensor(mean, dtype=torch.float64)

#----------------------------------------------------------------------------
# Sliced Wasserstein.


def test_wasserstein_1d_unequal_sizes_exact():
    # Quantiles of {0, 1} and {0, 0.5, 1} differ by 0.5 on (1/3, 2/3]: W1 = 1/6, W2^2 = 1/12.
    u, v = torch.tensor([[1.0, 0.0]], dtype=torch.float64), torch.tensor([[0.5, 1.0, 0.0]], dtype=torch.float64)
    assert wasserstein_1d(u, v, p=1).item() == pytest.approx(1 / 6, abs=1e-12)
    assert wasserstein_1d(u, v, p=2).item() == pytest.approx(1 / 12, abs=1e-12)
    assert wasserstein_1d(v, u, p=2).item() == pytest.approx(1 / 12, abs=1e-12)


def test_sliced_wasserstein_self_is_zero():
    x = normal(1000)
    assert sliced_wasserstein(x, x) == 0.0
    assert sliced_wasserstein(x, x.flip(0)) < 1e-12                    # order does not matter
    assert sliced_wasserstein(x, x.repeat(3, 1)) < 1e-12               # same empirical measure, sizes differ
    assert sliced_wasserstein(x, x[:999]) > 0


@pytest.mark.parametrize("p", [1, 2])
def test_sliced_wasserstein_gaussian_shift_closed_form(p):
    # N(0, I) vs N(m, I): theta.x are N(0, 1) vs N(m.theta, 1), so W_p = |m.theta| and
    # SW_2 = sqrt(E cos^2) |m| = |m| / sqrt2, SW_1 = E|cos| |m| = 2 |m| / pi on the circle.
    m = torch.tensor([1.2, -1.6], dtype=torch.float64)                  # |m| = 2
    x, y = normal(5000, seed=1), normal(5000, seed=2)
    x, y = x - x.mean(0), y - y.mean(0) + m                              # exact means: less sampling noise
    sw = sliced_wasserstein(x, y, n_projections=1024, p=p)
    # Same directions as the metric: only the data's sampling noise is left.
    theta = random_directions(1024, 2, torch.Generator().manual_seed(0))
    assert sw == pytest.approx((theta @ m).abs().pow(p).mean().item() ** (1 / p), rel=0.005)
    # Uniform directions on the circle: Monte Carlo error of 1024 directions, about 1%.
    assert sw == pytest.approx(2 * (2 / math.pi if p == 1 else 1 / math.sqrt(2)), rel=0.03)
    y_part = y[:2000] - y[:2000].mean(0) + m                             # unequal sizes: quantile path
    assert sliced_wasserstein(x, y_part, n_projections=1024, p=p) == pytest.approx(sw, rel=0.01)


def test_sliced_wasserstein_symmetric_equivariant_deterministic():
    x, y = normal(3000, seed=3), normal(2000, (0.5, 0.0), seed=4) * 0.7
    sw = sliced_wasserstein(x, y)
    assert sliced_wasserstein(y, x) == pytest.approx(sw, rel=1e-12)
    assert sliced_wasserstein(3.5 * x, 3.5 * y) == pytest.approx(3.5 * sw, rel=1e-12)
    assert sliced_wasserstein(x + 2.0, y + 2.0) == pytest.approx(sw, rel=1e-9)
    assert sliced_wasserstein(x, y) == sw                                # default projections are fixed
    other = sliced_wasserstein(x, y, generator=torch.Generator().manual_seed(123))
    assert other != sw and other == pytest.approx(sw, rel=0.1)


def test_sample_distance():
    data = gmm_ring()
    good = data.sample(4000, generator=torch.Generator().manual_seed(5))
    bad = good * 1.3
    d_good, d_bad = sample_distance(good, data), sample_distance(bad, data)
    assert d_good < 0.05 and d_bad > 3 * d_good                          # 0.05: noise floor of n = 4000
    ref = data.sample(4000, generator=torch.Generator().manual_seed(6))
    assert sample_distance(good, ref) == sliced_wasserstein(good, ref)

#----------------------------------------------------------------------------
# MMD.


def mmd_brute_force(x, y, bandwidths, unbiased):
    def k(a, b):
        d2 = ((a[:, None] - b[None]) ** 2).sum(-1)
        return sum(torch.exp(-d2 / (2 * h ** 2)) for h in bandwidths)
    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    if unbiased:
        n, m = len(x), len(y)
        return ((kxx.sum() - kxx.trace()) / (n * (n - 1)) + (kyy.sum() - kyy.trace()) / (m * (m - 1))
                - 2 * kxy.mean()).item()
    return (kxx.mean() + kyy.mean() - 2 * kxy.mean()).item()


@pytest.mark.parametrize("unbiased", [False, True])
def test_mmd_matches_brute_force(unbiased):
    x, y = normal(300, seed=7), normal(200, (0.3, 0.1), seed=8)
    bw = (0.1, 0.5, 2.0)
    expected = mmd_brute_force(x, y, bw, unbiased)
    assert mmd(x, y, bandwidths=bw, unbiased=unbiased) == pytest.approx(expected, rel=1e-10)


def test_mmd_gaussian_closed_form():
    # One RBF of length h between N(0, s^2 I) and N(m, s^2 I) in d dims:
    # MMD^2 = 2 (h^2 / (h^2 + 2 s^2))^(d/2) (1 - exp(-|m|^2 / (2 (h^2 + 2 s^2)))).
    h, m = 1.0, 1.0
    expected = 2 * (h ** 2 / (h ** 2 + 2)) * (1 - math.exp(-m ** 2 / (2 * (h ** 2 + 2))))
    x, y = normal(2000, seed=9), normal(2000, (m, 0.0), seed=10)
    assert mmd(x, y, bandwidths=(h,), unbiased=True) == pytest.approx(expected, rel=0.1)


def test_mmd_orders_shifts():
    x = normal(1500, seed=11)
    assert mmd(x, x) == pytest.approx(0.0, abs=1e-12)
    same = mmd(x, normal(1500, seed=12))
    small = mmd(x, normal(1500, (0.2, 0.0), seed=12))
    large = mmd(x, normal(1500, (1.0, 0.0), seed=12))
    assert 0 < same < small < large
    assert 2 * same < small
    # The unbiased estimate removes the O(1/n) bias: near 0 for equal laws, nearly unchanged for others.
    same_u = mmd(x, normal(1500, seed=12), unbiased=True)
    small_u = mmd(x, normal(1500, (0.2, 0.0), seed=12), unbiased=True)
    assert abs(same_u) < 0.1 * small_u and small_u == pytest.approx(small - same, rel=0.2)


def test_mmd_subsamples_large_sets():
    x, y = normal(3000, seed=13), normal(3000, (0.5, 0.0), seed=14)
    a = mmd(x, y, bandwidths=(0.5,), max_n=1500, unbiased=True)
    assert a == mmd(x, y, bandwidths=(0.5,), max_n=1500, unbiased=True)  # fixed default subsampling seed
    assert a != mmd(x, y, bandwidths=(0.5,), max_n=1500, unbiased=True, generator=torch.Generator().manual_seed(1))
    assert a == pytest.approx(mmd(x, y, bandwidths=(0.5,), max_n=None, unbiased=True), rel=0.15)

#----------------------------------------------------------------------------
# Consistency functions and errors.


def rk4_log_sigma(D, x, t, sigma_min, steps):
    """An independent reference: classical RK4 on dx/dlog(sigma) = x - D(x, sigma)."""
    x = x.double()
    lam = torch.linspace(math.log(t), math.log(sigma_min), steps + 1, dtype=torch.float64)

    def f(x, l):
        return x - D(x, torch.full((x.shape[0],), math.exp(l), dtype=torch.float64))

    for l0, l1 in zip(lam[:-1].tolist(), lam[1:].tolist()):
        h = l1 - l0
        k1 = f(x, l0)
        k2 = f(x + h / 2 * k1, l0 + h / 2)
        k3 = f(x + h / 2 * k2, l0 + h / 2)
        k4 = f(x + h * k3, l1)
        x = x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    return x


def test_true_consistency_function_single_gaussian_closed_form():
    data = gaussian(mean=0.3, std=0.5)
    x = 10.0 * normal(500, seed=15)
    exact = data.consistency_function(x, 10.0, SIGMA_MIN)
    assert torch.allclose(true_consistency_function(data.denoiser, x, 10.0), exact, atol=1e-4)   # Heun: ~4e-5


def test_true_consistency_function_mixture_agrees_with_fine_rk4():
    data = gmm_ring()
    t = 20.0
    x = t * normal(256, seed=16)
    heun = true_consistency_function(data.denoiser, x, t)
    reference = rk4_log_sigma(data.denoiser, x, t, SIGMA_MIN, steps=400)      # error ~1e-7
    assert (heun - reference).norm(dim=1).max() < 3e-4                  # Heun, 512 levels: ~7e-5
    assert (heun.norm(dim=1) - 0.7).abs().median() < 0.1                 # it landed on the ring
    # Per-row t: each group is solved on its own grid.
    t_rows = torch.where(torch.arange(256) < 128, 20.0, 5.0).double()
    mixed = true_consistency_function(data.denoiser, x, t_rows)
    assert torch.equal(mixed[:128], heun[:128])
    assert torch.equal(mixed[128:], true_consistency_function(data.denoiser, x[128:], 5.0))
    # Boundary condition f(x, sigma_min) = x.
    assert torch.allclose(true_consistency_function(data.denoiser, x, SIGMA_MIN), x, atol=1e-12)


def test_consistency_error_single_gaussian():
    data = gaussian(mean=0.3, std=0.5)
    t = 80.0
    exact = lambda x, sigma: data.consistency_function(x, sigma, SIGMA_MIN)       # noqa: E731
    assert consistency_error(exact, data, t=t) < 1e-5
    # Identity: x - f(x) = (1 - r)(x - mu), r = sqrt((s^2 + sigma_min^2) / (s^2 + t^2)), E|x - mu|^2 = d (s^2 + t^2).
    r = math.sqrt((0.25 + SIGMA_MIN ** 2) / (0.25 + t ** 2))
    identity = consistency_error(lambda x, sigma: x, data, t=t)
    assert identity == pytest.approx((1 - r) * math.sqrt(2 * (0.25 + t ** 2)), rel=0.03)
    scaled = consistency_error(lambda x, sigma: 1.1 * exact(x, sigma), data, t=t)
    assert 0.01 < scaled < identity
    assert consistency_error(lambda x, sigma: exact(x, 0.8 * sigma), data, t=t) > 0.01   # wrong time
    # The end point sigma_min is honoured.
    exact_half = lambda x, sigma: data.consistency_function(x, sigma, 0.5)         # noqa: E731
    assert consistency_error(exact_half, data, t=t, sigma_min=0.5) < 1e-5
    assert consistency_error(exact, data, t=t, sigma_min=0.5) > 0.05


def test_consistency_error_mixture():
    data = gmm_ring()
    t, n = 80.0, 256
    truth = lambda x, sigma: true_consistency_function(data.denoiser, x, sigma)   # noqa: E731
    assert consistency_error(truth, data, n=n, t=t) < 1e-5              # same solve (float32 output)
    coarse = lambda x, sigma: true_consistency_function(data.denoiser, x, sigma, steps=8)  # noqa: E731
    assert 1e-3 < consistency_error(coarse, data, n=n, t=t) < 0.2
    # The single-Gaussian map with the ring's mean and variance is a poor consistency function.
    moment = gaussian(mean=0.0, std=0.5)
    wrong = lambda x, sigma: moment.consistency_function(x, sigma, SIGMA_MIN)     # noqa: E731
    assert consistency_error(wrong, data, n=n, t=t) > 0.2
    assert consistency_error(lambda x, sigma: x, data, n=n, t=t) > 50
    # The true map pushes N(0, t^2 I) (nearly) onto the data.
    x_t = t * normal(2000, seed=17).float()
    pushed = true_consistency_function(data.denoiser, x_t, t, steps=64)
    assert sample_distance(pushed, data) < 0.06 and sample_distance(x_t, data) > 10


def test_consistency_error_needs_a_denoiser():
    from fewstep.data.toy2d import Moons
    with pytest.raises(TypeError):
        consistency_error(lambda x, sigma: x, Moons(), n=16)
