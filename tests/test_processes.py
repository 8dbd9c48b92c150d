"""Noise processes and eps / x0 / v / score conversions (seed 004)."""

import pytest
import torch

from fewstep.processes import PREDICTIONS, VE, VPContinuous, VPDiscrete, from_x0, make_process, to_x0


@pytest.mark.parametrize("kind", PREDICTIONS)
@pytest.mark.parametrize("process", [VE(), VPContinuous()])
def test_conversions_match_definitions_and_round_trip(kind, process):
    g = torch.Generator().manual_seed(0)
    t = torch.tensor([0.3, 0.7], dtype=torch.float64)[:, None]
    t = t * 10 if process.name == "ve" else t
    alpha, sigma = process.alpha(t), process.sigma(t)
    x0 = torch.randn(2, 3, generator=g, dtype=torch.float64)
    eps = torch.randn(2, 3, generator=g, dtype=torch.float64)
    x_t = alpha * x0 + sigma * eps
    truth = {"x0": x0, "eps": eps, "v": alpha * eps - sigma * x0, "score": -eps / sigma}[kind]
    pred = from_x0(x0, kind, x_t, alpha, sigma)
    torch.testing.assert_close(pred, truth)
    torch.testing.assert_close(to_x0(pred, kind, x_t, alpha, sigma), x0)


def test_unknown_prediction_kind():
    with pytest.raises(ValueError, match="unknown prediction"):
        to_x0(torch.zeros(1), "noise", torch.zeros(1), 1.0, 1.0)


def test_vp_discrete_alpha_bar_and_ve_sigma():
    p = VPDiscrete(T=1000)
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    assert p.alpha(10).item() ** 2 == pytest.approx(torch.prod(1 - betas[:10]).item(), rel=1e-12)
    assert p.alpha(1).item() ** 2 == pytest.approx(1 - 1e-4, rel=1e-12)
    t = torch.tensor([1, 37, 500, 1000])
    torch.testing.assert_close(p.ve_sigma(t), p.sigma(t) / p.alpha(t))
    torch.testing.assert_close(p.alpha(t) ** 2 + p.sigma(t) ** 2, torch.ones(4, dtype=torch.float64))
    torch.testing.assert_close(p.t_of_ve_sigma(p.ve_sigma(t)), t.double())     # exact at the grid points


def test_vp_discrete_strided():
    p = VPDiscrete(T=1000)
    ts = p.strided_timesteps(10)
    assert len(ts) == 10 and ts[-1].item() == 1000 and ts[0].item() >= 1
    assert torch.all(ts[1:] > ts[:-1])
    with pytest.raises(ValueError):
        p.strided_timesteps(0)


def test_vp_continuous_kernel_and_inverse():
    p = VPContinuous(0.1, 20.0)
    t = torch.tensor([1e-3, 0.25, 0.5, 1.0], dtype=torch.float64)
    # alpha_t = exp(-1/2 int_0^t beta), beta(t) = 0.1 + 19.9 t
    torch.testing.assert_close(p.alpha(t), torch.exp(-0.5 * (0.1 * t + 0.5 * 19.9 * t ** 2)))
    torch.testing.assert_close(p.alpha(t) ** 2 + p.sigma(t) ** 2, torch.ones(4, dtype=torch.float64))
    torch.testing.assert_close(p.t_of_ve_sigma(p.ve_sigma(t)), t)


def test_ve_is_identity_in_sigma():
    p = make_process("ve")
    assert p.sigma(3.0).item() == 3.0 and p.alpha(3.0).item() == 1.0
    with pytest.raises(ValueError, match="unknown process"):
        make_process("sub-vp")
