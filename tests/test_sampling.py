"""Samplers against closed-form answers (tests/oracles.py) plus a contract every sampler must meet."""

import math

import pytest
import torch

from fewstep.data.toy2d import GaussianMixture, gmm_ring
from fewstep.processes import VPDiscrete
from fewstep.sampling import (SAMPLERS, consistency_taus, initial_noise, nfe, ode_step, sample_consistency,
                              sample_ddim, sample_ddpm, sample_euler, sample_heun, sample_langevin,
                              vp_sigmas)
from fewstep.schedules import append_zero, karras_sigmas

from oracles import (as_consistency_function, as_denoiser, ddim_affine, gaussian_denoiser,
                     heun_churn_affine, heun_reference, langevin_affine, propagate)

MU, STD = 0.3, 0.5
SIGMA_MIN, SIGMA_MAX = 0.002, 80.0


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def one_gaussian(dim=2):
    return GaussianMixture(torch.full((1, dim), MU), [STD])


def assert_moments(x, var, n_se=4.0):
    """Sample mean within n_se standard errors of MU, pooled variance within n_se of var."""
    x = x.double().flatten()
    n = x.numel()
    assert abs(x.mean().item() - MU) < n_se * math.sqrt(var / n)
    assert abs(x.var().item() - var) < n_se * var * math.sqrt(2 / n)

#----------------------------------------------------------------------------
# Deterministic solvers: exact PF-ODE and convergence order.


def test_heun_matches_closed_form_ode_solution():
    gm = one_gaussian()
    x = SIGMA_MAX * torch.randn(512, 2, generator=gen(), dtype=torch.float64)
    exact = gm.ode_solution(x, SIGMA_MAX, SIGMA_MIN)
    err = {n: (sample_heun(as_denoiser(gm), x, karras_sigmas(n + 1)) - exact).abs().max().item()
           for n in (128, 256, 1024)}
    assert 3.8 < err[128] / err[256] < 4.2                  # second order towards the true solution
    assert err[1024] < 3e-5                                 # |x| ~ 0.5 at sigma_min


@pytest.fixture(scope="module")
def ring_trajectories():
    gm = gmm_ring()
    x = SIGMA_MAX * torch.randn(128, 2, generator=gen(1), dtype=torch.float64)
    return gm, x, heun_reference(as_denoiser(gm), x, SIGMA_MAX, SIGMA_MIN, steps=2048)


@pytest.mark.parametrize("sampler, steps, order", [(sample_euler, (32, 64, 128), 2.0),
                                                    (sample_heun, (32, 64, 128), 4.0)])
def test_global_error_order_on_ring(ring_trajectories, sampler, steps, order):
    """RMS error at sigma_min over 128 trajectories falls ~2x (Euler) and ~4x (Heun) per doubling.
    Measured: Euler 2.04, 2.03; Heun 4.14, 3.86 (the max error is still pre-asymptotic for Heun)."""
    gm, x, ref = ring_trajectories
    err = [(sampler(as_denoiser(gm), x, karras_sigmas(n + 1)) - ref).norm(dim=1).square().mean().sqrt()
           for n in steps]
    ratios = [(a / b).item() for a, b in zip(err, err[1:])]
    lo, hi = (1.7, 2.4) if order == 2 else (3.2, 5.0)
    assert all(lo < r < hi for r in ratios), ratios

@pytest.mark.parametrize("solver, sampler", [("euler", sample_euler), ("heun", sample_heun)])
def test_ode_step_with_per_sample_sigmas_is_one_sampler_step(solver, sampler):
    """CD's solver Phi (seed 000, Algorithm 2): rows with sigma_next = 0 take Heun's Euler fallback."""
    D = as_denoiser(gmm_ring())
    x = 3 * torch.randn(6, 2, generator=gen(), dtype=torch.float64)
    sigma = torch.tensor([3.0, 3.0, 1.0, 1.0, 0.5, 0.5], dtype=torch.float64)
    sigma_next = torch.tensor([2.0, 0.0, 0.5, 0.0, 0.1, 0.0], dtype=torch.float64)
    out = ode_step(D, x, sigma, sigma_next, solver)
    for i in range(6):
        torch.testing.assert_close(out[i:i + 1], sampler(D, x[i:i + 1], torch.stack([sigma[i], sigma_next[i]])),
                                   rtol=1e-12, atol=1e-14)
    with pytest.raises(ValueError, match="unknown ODE solver"):
        ode_step(D, x, sigma, sigma_next, "rk4")

#----------------------------------------------------------------------------
# DDIM / DDPM (seed 002).


def test_ddim_eta0_is_euler_bit_for_bit():
    D = as_denoiser(gmm_ring())
    x = SIGMA_MAX * torch.randn(64, 2, generator=gen(), dtype=torch.float64)
    for sigmas in (append_zero(karras_sigmas(12)), vp_sigmas(VPDiscrete(), 20)):
        assert torch.equal(sample_ddim(D, x * sigmas[0] / SIGMA_MAX, sigmas, eta=0.0),
                           sample_euler(D, x * sigmas[0] / SIGMA_MAX, sigmas))


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_one_ddim_step_equals_seed_vp_update(eta):
    """x_s = sqrt(abar_s) x0_hat + sqrt(1 - abar_s - sigma_t^2) eps_hat + sigma_t z (seed 002), by hand."""
    process, t, s = VPDiscrete(), 600, 350
    ab_t, ab_s = process.alpha_bars[t - 1], process.alpha_bars[s - 1]
    D = as_denoiser(gmm_ring())
    x_t = torch.randn(16, 2, generator=gen(2), dtype=torch.float64)               # VP coordinates
    x, s_t, s_s = x_t / ab_t.sqrt(), process.ve_sigma(t), process.ve_sigma(s)
    x0_hat = D(x, s_t.expand(16))
    eps_hat = (x_t - ab_t.sqrt() * x0_hat) / (1 - ab_t).sqrt()
    var = eta ** 2 * (1 - ab_s) / (1 - ab_t) * (1 - ab_t / ab_s)
    z = torch.randn(16, 2, generator=gen(3), dtype=torch.float64)
    x_s = ab_s.sqrt() * x0_hat + (1 - ab_s - var).sqrt() * eps_hat + var.sqrt() * z
    out = sample_ddim(D, x, torch.stack([s_t, s_s]), eta=eta, generator=gen(3))
    torch.testing.assert_close(out, x_s / ab_s.sqrt(), rtol=1e-10, atol=1e-12)


def test_vp_sigmas_and_initial_noise():
    process = VPDiscrete()
    sigmas = vp_sigmas(process, 50)
    assert len(sigmas) == 51 and sigmas[-1] == 0 and (sigmas[:-1] > sigmas[1:]).all()
    assert sigmas[0] == process.ve_sigma(process.T) and sigmas[-2] == process.ve_sigma(1)
    x = initial_noise((8, 3), sigmas[0], generator=gen(), vp=True, dtype=torch.float64)
    z = torch.randn(8, 3, generator=gen(), dtype=torch.float64)                   # x_T ~ N(0, I) in VP
    torch.testing.assert_close(x, z / process.alpha(process.T), rtol=1e-12, atol=0)
    torch.testing.assert_close(initial_noise((8, 3), 80.0, generator=gen(), dtype=torch.float64), 80 * z)


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_ddim_moments_match_gaussian_propagation(eta):
    """On the strided S=50 schedule the sample variance is the exact affine-Gaussian prediction
    (0.223 / 0.217 / 0.196 for eta 0 / 0.5 / 1: coarse steps shrink it, more for DDPM)."""
    sigmas = vp_sigmas(VPDiscrete(), 50)
    x = initial_noise((20000, 2), sigmas[0], generator=gen(4), vp=True, dtype=torch.float64)
    out = sample_ddim(as_denoiser(one_gaussian()), x, sigmas, eta=eta, generator=gen(5))
    assert_moments(out, propagate(1 + sigmas[0].item() ** 2, ddim_affine(sigmas.tolist(), eta, STD ** 2)))


def test_ddpm_full_chain_matches_data():
    sigmas = vp_sigmas(VPDiscrete(), 1000)
    x = initial_noise((20000, 1), sigmas[0], generator=gen(6), vp=True, dtype=torch.float64)
    out = sample_ddpm(as_denoiser(one_gaussian(dim=1)), x, sigmas, generator=gen(7))
    assert abs(out.mean().item() - MU) < 0.02
    assert abs(out.var().item() / STD ** 2 - 1) < 0.05                         # predicted 0.984

#----------------------------------------------------------------------------
# EDM churn and Langevin dynamics reach the data distribution.


@pytest.mark.parametrize("steps, S_churn", [(32, 40.0), (128, 40.0)])
def test_heun_churn_moments(steps, S_churn):
    """Churn variance is the affine prediction (0.276 at 32 steps); at 128 steps it is the data's."""
    sigmas = append_zero(karras_sigmas(steps))
    x = initial_noise((20000, 1), SIGMA_MAX, generator=gen(8), dtype=torch.float64)
    out = sample_heun(as_denoiser(one_gaussian(dim=1)), x, sigmas, S_churn=S_churn, generator=gen(9))
    var = propagate(SIGMA_MAX ** 2, heun_churn_affine(sigmas.tolist(), S_churn, STD ** 2))
    assert_moments(out, var)
    if steps == 128:
        assert abs(out.var().item() / STD ** 2 - 1) < 0.05


@pytest.mark.parametrize("sampler", [sample_euler, sample_heun])
def test_churn_noise_is_edm_algorithm_2(sampler):
    """With D(x) = x the ODE steps are still, so the output is exactly the churn noise
    sum_i S_noise sqrt(sigma_hat_i^2 - sigma_i^2) z_i over sigma_i in [S_tmin, S_tmax]."""
    sigmas = append_zero(karras_sigmas(8, 0.01, 10.0))
    opts = dict(S_churn=2.0, S_tmin=0.1, S_tmax=5.0, S_noise=1.007)              # gamma = 2/8, uncapped
    out = sampler(lambda x, sigma, **cond: x, torch.zeros(4, 3, dtype=torch.float64), sigmas,
                  generator=gen(), **opts)
    g, expected = gen(), torch.zeros(4, 3, dtype=torch.float64)
    for sigma in sigmas[:-1].tolist():
        if 0.1 <= sigma <= 5.0:
            expected += 1.007 * sigma * math.sqrt(1.25 ** 2 - 1) * torch.randn(4, 3, generator=g, dtype=torch.float64)
    assert (sigmas[:-1] > 5.0).any() and (sigmas[:-1] < 0.1).any()               # the window matters
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-14)


def test_churn_changes_the_path_and_zero_churn_is_deterministic():
    D, sigmas = as_denoiser(gmm_ring()), append_zero(karras_sigmas(10))
    x = initial_noise((32, 2), SIGMA_MAX, generator=gen(), dtype=torch.float64)
    assert torch.equal(sample_heun(D, x, sigmas, generator=gen(1)), sample_heun(D, x, sigmas, generator=gen(2)))
    assert not torch.allclose(sample_heun(D, x, sigmas, S_churn=5, generator=gen(1)), sample_heun(D, x, sigmas))


def test_langevin_moments_match_data():
    levels = torch.logspace(math.log10(20), math.log10(0.05), 20, dtype=torch.float64)
    x = initial_noise((20000, 1), levels[0], generator=gen(10), dtype=torch.float64)
    out = sample_langevin(as_denoiser(one_gaussian(dim=1)), x, levels, n_steps=50, step_scale=0.5 * 0.05 ** 2,
                          generator=gen(11))
    var = propagate(levels[0].item() ** 2, langevin_affine(levels.tolist(), 50, 0.5 * 0.05 ** 2, STD ** 2))
    assert_moments(out, var)                                                      # predicted 0.2545
    assert abs(out.var().item() / STD ** 2 - 1) < 0.05


def test_langevin_rejects_divergent_step():
    with pytest.raises(ValueError, match="diverge"):
        sample_langevin(gaussian_denoiser(), torch.zeros(4, 2), torch.tensor([1.0, 0.1]), step_scale=0.05)

#----------------------------------------------------------------------------
# Multistep consistency sampling (seed 000, Algorithm 1).


@pytest.mark.parametrize("n_steps", [1, 2, 4])
def test_consistency_sampling_matches_data(n_steps):
    f = as_consistency_function(one_gaussian(), SIGMA_MIN)
    x = initial_noise((20000, 2), SIGMA_MAX, generator=gen(12), dtype=torch.float64)
    out = sample_consistency(f, x, consistency_taus(n_steps), generator=gen(13))
    assert_moments(out, STD ** 2 + SIGMA_MIN ** 2)


def test_one_consistency_step_is_f_at_T():
    f = as_consistency_function(one_gaussian(), SIGMA_MIN)
    x = initial_noise((64, 2), SIGMA_MAX, generator=gen(), dtype=torch.float64)
    assert torch.equal(sample_consistency(f, x, [SIGMA_MAX]), f(x, torch.full((64,), SIGMA_MAX, dtype=torch.float64)))


def test_consistency_noise_is_sqrt_tau2_minus_sigma_min2():
    seen = []
    def f(x, t, **cond):                                    # records x_hat; maps everything to 0
        seen.append((t[0].item(), x.clone()))
        return torch.zeros_like(x)
    sample_consistency(f, torch.zeros(40000, 1, dtype=torch.float64), [1.0, 0.003], generator=gen())
    tau, x_hat = seen[1]
    assert tau == 0.003 and abs(x_hat.var().item() / (0.003 ** 2 - SIGMA_MIN ** 2) - 1) < 0.03


@pytest.mark.parametrize("taus, problem", [([1.0, 5.0], "above T"), ([80.0, 80.0], "strictly decreasing"),
                                           ([80.0, 1.0, 2.0], "strictly decreasing"), ([80.0, 0.002], "exceed sigma_min"),
                                           ([80.0, 0.001], "exceed sigma_min"), ([], "empty")])
def test_consistency_tau_validation(taus, problem):
    with pytest.raises(ValueError, match=problem):
        sample_consistency(gaussian_denoiser(), torch.zeros(2, 2), taus)


def test_consistency_taus():
    assert consistency_taus(1).tolist() == [SIGMA_MAX]
    taus = consistency_taus(4)
    torch.testing.assert_close(taus, karras_sigmas(5)[:-1])
    assert len(taus) == 4 and (taus[:-1] > taus[1:]).all() and taus[-1] > SIGMA_MIN
    with pytest.raises(ValueError, match="n_steps >= 1"):
        consistency_taus(0)

#----------------------------------------------------------------------------
# Cost and the contract every sampler meets.


def test_nfe():
    sigmas = append_zero(karras_sigmas(18))
    assert nfe("heun", sigmas) == 35 and nfe("euler", sigmas) == 18 and nfe("ddpm", sigmas) == 18
    assert nfe("heun", karras_sigmas(18)) == 34
    assert nfe("langevin", sigmas, n_steps=10) == 181 and nfe("consistency", [80.0, 1.0]) == 2
    with pytest.raises(ValueError, match="unknown sampler"):
        nfe("rk4", sigmas)


def counting_denoiser(calls):
    """A Gaussian denoiser on image-shaped tensors that checks the contract and counts calls."""
    D = gaussian_denoiser(0.1, 0.5)
    def wrapped(x, sigma, *, label):
        assert label == "cat" and sigma.shape == (x.shape[0],) and sigma.dtype == x.dtype == torch.float32
        calls.append(sigma[0].item())
        return D(x, sigma)
    return wrapped


@pytest.mark.parametrize("name", sorted(SAMPLERS) + ["consistency"])
def test_sampler_contract(name):
    sampler = SAMPLERS.get(name, sample_consistency)
    sigmas = append_zero(karras_sigmas(6, 0.01, 10.0)) if name != "consistency" else consistency_taus(3)
    x = initial_noise((3, 2, 4, 4), sigmas[0], generator=gen(), dtype=torch.float32)
    rng = torch.get_rng_state()
    runs = []
    for seed in (0, 0, 1):
        calls = []
        runs.append(sampler(counting_denoiser(calls), x, sigmas, cond={"label": "cat"}, generator=gen(seed)))
        assert len(calls) == nfe(name, sigmas)
    sampler(counting_denoiser([]), x, sigmas, cond={"label": "cat"})               # generator=None
    out = runs[0]
    assert out.shape == x.shape and out.dtype == torch.float32 and torch.isfinite(out).all()
    assert torch.equal(runs[0], runs[1])
    assert torch.equal(torch.get_rng_state(), rng)
    if name not in ("euler", "heun", "ddim", "dpm2", "dpmpp-2m"):                   # stochastic ones
        assert not torch.equal(runs[0], runs[2])
