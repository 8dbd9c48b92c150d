"""DPM-Solver-2 and DPM-Solver++(2M) (seed 004's teacher baselines) against closed forms.

For data at one point mu the PF-ODE's solution is x(sigma) = mu + (x_T - mu) sigma / T and both solvers, being
exponential integrators in VE coordinates, are exact on any grid. For Gaussian data N(mu, s^2) the solution is
x(sigma) = mu + (x_T - mu) sqrt(s^2 + sigma^2) / sqrt(s^2 + T^2); both are second order: halving the step
size divides the error by about 4 (Euler's by 2)."""

import math

import pytest
import torch

from fewstep.sampling import SAMPLERS, nfe, sample_dpm2, sample_dpmpp_2m, sample_euler
from fewstep.schedules import append_zero, karras_sigmas
from oracles import gaussian_denoiser

SOLVERS = {"dpm2": sample_dpm2, "dpmpp-2m": sample_dpmpp_2m}


def exact(x_T, T, sigma, mu, s):
    return mu + (x_T - mu) * math.sqrt(s ** 2 + sigma ** 2) / math.sqrt(s ** 2 + T ** 2)


@pytest.mark.parametrize("name", SOLVERS)
@pytest.mark.parametrize("steps", [1, 2, 5])
def test_exact_for_a_point_mass(name, steps):
    x_T = torch.randn(16, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 80
    grid = karras_sigmas(steps + 1, 0.5, 80.0)                  # stop above 0: the exponential step is exact there
    x = SOLVERS[name](gaussian_denoiser(0.3, 0.0), x_T, grid)
    torch.testing.assert_close(x, exact(x_T, 80.0, 0.5, 0.3, 0.0), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", SOLVERS)
def test_one_step_matches_its_formula(name):
    """The first step from sigma to sigma_next on Gaussian data, written out from the papers' update rules."""
    mu, s, sigma, sigma_next = 0.2, 0.5, 2.0, 0.7
    D = gaussian_denoiser(mu, s)
    x = torch.tensor([[1.3], [-0.4]], dtype=torch.float64)
    Dx = lambda v, sig: mu + s ** 2 / (s ** 2 + sig ** 2) * (v - mu)
    if name == "dpmpp-2m":                  # x_t = (sigma_t / sigma_s) x_s - (e^{-h} - 1) D_s, e^{-h} = sigma_t / sigma_s
        want = sigma_next / sigma * x + (1 - sigma_next / sigma) * Dx(x, sigma)
    else:                                   # u = x - sigma_s (e^{h/2} - 1) eps_s; x_t = x - sigma_t (e^h - 1) eps(u)
        r = math.sqrt(sigma_next / sigma)
        eps = (x - Dx(x, sigma)) / sigma
        u = x - sigma * r * (1 / r - 1) * eps
        sig_mid = sigma * r
        want = x - sigma_next * (sigma / sigma_next - 1) * (u - Dx(u, sig_mid)) / sig_mid
    got = SOLVERS[name](D, x, torch.tensor([sigma, sigma_next], dtype=torch.float64))
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name,order", [("dpm2", 2), ("dpmpp-2m", 2), ("euler", 1)])
def test_convergence_order_on_gaussian_data(name, order):
    mu, s, T, lo = 0.1, 0.5, 80.0, 0.01
    x_T = torch.randn(64, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * T
    sampler = {**SOLVERS, "euler": sample_euler}[name]
    errs = [(sampler(gaussian_denoiser(mu, s), x_T, karras_sigmas(n + 1, lo, T)) - exact(x_T, T, lo, mu, s)).abs().max()
            for n in (16, 32, 64)]
    ratios = [float(a / b) for a, b in zip(errs, errs[1:])]
    assert all(2 ** order * 0.7 < r < 2 ** order * 1.5 for r in ratios), ratios


def test_registered_with_their_cost():
    grid = append_zero(karras_sigmas(8))
    assert SAMPLERS["dpm2"] is sample_dpm2 and SAMPLERS["dpmpp-2m"] is sample_dpmpp_2m
    assert nfe("dpm2", grid) == 15 and nfe("dpmpp-2m", grid) == 8
    D = gaussian_denoiser(0.0, 0.5)
    calls = []
    counting = lambda x, sigma, **c: (calls.append(1), D(x, sigma))[1]
    for name, fn in SOLVERS.items():
        calls.clear()
        fn(counting, torch.randn(4, 2, dtype=torch.float64) * 80, grid)
        assert len(calls) == nfe(name, grid)
