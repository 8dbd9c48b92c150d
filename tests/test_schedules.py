"""Schedules against values worked out by hand from the seeds' formulas."""

import math

import pytest
import torch

from fewstep.schedules import (append_zero, cm_timesteps, ct_mu, ct_N, ict_index_probs, ict_N, karras_sigmas,
                               pseudo_huber_c, sample_karras_uniform)


def test_karras_endpoints_and_midpoint():
    s = karras_sigmas(3, 0.002, 80.0, 7.0)
    assert s[0].item() == pytest.approx(80.0, rel=1e-12) and s[-1].item() == pytest.approx(0.002, rel=1e-12)
    # middle point: ((80^(1/7) + 0.002^(1/7)) / 2)^7
    assert s[1].item() == pytest.approx(((80 ** (1 / 7) + 0.002 ** (1 / 7)) / 2) ** 7, rel=1e-12)
    assert torch.all(s[1:] < s[:-1])
    assert append_zero(s)[-1].item() == 0 and len(append_zero(s)) == 4


def test_cm_timesteps_ascending_t1_eps_tN_T():
    t = cm_timesteps(18)
    assert t[0].item() == pytest.approx(0.002) and t[-1].item() == pytest.approx(80.0) and len(t) == 18
    assert torch.all(t[1:] > t[:-1])
    with pytest.raises(ValueError):
        cm_timesteps(1)


def test_ct_N_hand_values():
    # N(k) = ceil(sqrt(k/K ((s1+1)^2 - s0^2) + s0^2) - 1) + 1, s0 = 2, s1 = 150
    assert ct_N(0, 1000) == 2                       # ceil(2 - 1) + 1
    assert ct_N(1000, 1000) == 151                  # ceil(151 - 1) + 1
    assert ct_N(500, 1000) == 107                   # sqrt(11402.5) = 106.78 -> ceil(105.78) + 1
    assert ct_N(1, 1000) == 6                       # sqrt(0.001 * 22797 + 4) = 5.18 -> ceil(4.18) + 1


def test_ct_mu_hand_values():
    # mu(k) = exp(s0 log mu0 / N(k)), mu0 = 0.9
    assert ct_mu(0, 1000) == pytest.approx(0.9, rel=1e-12)                     # N = 2 = s0
    assert ct_mu(1000, 1000) == pytest.approx(0.9986054697436056, rel=1e-12)   # 0.9^(2/151)


def test_ict_N_hand_values():
    # K' = floor(K / (log2 floor(1280/10) + 1)) = floor(800 / 8) = 100
    K = 800
    assert [ict_N(k, K) for k in (0, 99, 100, 250, 699, 700, 799, 800)] == [11, 11, 21, 41, 641, 1281, 1281, 1281]
    # s0 = 2, s1 = 150 (seed 004, CIFAR-10): K' = floor(K / (log2 75 + 1)) = floor(700 / 7.229) = 96
    assert ict_N(95, 700, 2, 150) == 3 and ict_N(96, 700, 2, 150) == 5 and ict_N(699, 700, 2, 150) == 151   # min(2 * 2^7, 150) + 1


def test_ict_index_probs_hand_values():
    # p(i) proportional to erf((ln s_{i+1} + 1.1) / (2 sqrt 2)) - erf((ln s_i + 1.1) / (2 sqrt 2))
    p = ict_index_probs(torch.tensor([0.002, 0.1, 1.0, 80.0], dtype=torch.float64), P_mean=-1.1, P_std=2.0)
    assert p.tolist() == pytest.approx([0.2708058960947411, 0.4386749034328274, 0.2905192004724315], rel=1e-9)
    # on a fine grid the mass below exp(P_mean) is the lognormal's, renormalised to [0.002, 80]:
    # (Phi(0) - Phi((ln 0.002 + 1.1) / 2)) / (Phi((ln 80 + 1.1) / 2) - Phi((ln 0.002 + 1.1) / 2))
    sig = cm_timesteps(1281)
    p = ict_index_probs(sig)
    Phi = lambda v: 0.5 * (1 + math.erf(v / math.sqrt(2)))                      # noqa: E731
    lo, hi = Phi((math.log(0.002) + 1.1) / 2), Phi((math.log(80) + 1.1) / 2)
    below = p[sig[1:] <= math.exp(-1.1)].sum().item()
    assert below == pytest.approx((0.5 - lo) / (hi - lo), abs=2e-3)
    assert p.sum().item() == pytest.approx(1.0)


def test_pseudo_huber_c():
    assert pseudo_huber_c(3 * 32 * 32) == pytest.approx(0.00054 * math.sqrt(3072))


def test_karras_uniform_range_and_median():
    t = sample_karras_uniform(400000, torch.Generator().manual_seed(0))
    assert t.min() >= 0.002 and t.max() <= 80.0
    median = ((80 ** (1 / 7) + 0.002 ** (1 / 7)) / 2) ** 7
    assert t.median().item() == pytest.approx(median, rel=0.02)
