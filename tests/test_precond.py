"""Preconditioning wrappers: EDM's scalings, the consistency boundary, the VP eps wrapper."""

import pytest
import torch

from fewstep.nets.mlp import MLP
from fewstep.precond import ConsistencyPrecond, EDMPrecond, VPPrecond, consistency_scalings, edm_scalings
from fewstep.processes import VPDiscrete


def _random_net(dim=2, seed=0):
    torch.manual_seed(seed)
    net = MLP(dim=dim, width=32, depth=2)
    torch.nn.init.normal_(net.out.weight)          # non-zero output, so F(x, t) != 0
    return net


@pytest.mark.parametrize("boundary", ["scalings", "switch"])
def test_boundary_is_identity_exactly(boundary):
    f = ConsistencyPrecond(_random_net(), sigma_min=0.002, boundary=boundary)
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(1)) * 3
    assert torch.equal(f(x, torch.full((64,), 0.002)), x)
    assert not torch.allclose(f(x, torch.full((64,), 1.0)), x)      # and it is not the identity elsewhere


def test_consistency_scalings_values():
    s = torch.tensor([0.002, 0.502, 80.0], dtype=torch.float64)
    c_skip, c_out = consistency_scalings(s, 0.5, 0.002)
    assert c_skip[0].item() == 1.0 and c_out[0].item() == 0.0
    assert c_skip[1].item() == pytest.approx(0.25 / (0.25 + 0.25))                 # (t - eps) = sigma_data
    assert c_out[1].item() == pytest.approx(0.5 * 0.5 / (0.25 + 0.502 ** 2) ** 0.5)
    assert c_skip[2].item() < 1e-4 and c_out[2].item() == pytest.approx(0.5 * 79.998 / (0.25 + 6400) ** 0.5)


def test_edm_scalings_at_sigma_data():
    c_skip, c_out, c_in, c_noise = edm_scalings(torch.tensor(0.5, dtype=torch.float64), 0.5)
    assert c_skip.item() == pytest.approx(0.5) and c_out.item() == pytest.approx(0.5 / 2 ** 0.5)
    assert c_in.item() == pytest.approx(1 / (0.5 * 2 ** 0.5)) and c_noise.item() == pytest.approx(torch.log(torch.tensor(0.5)).item() / 4)


def test_edm_precond_calls_net_with_c_in_and_c_noise():
    seen = {}

    def raw(x_in, c_noise):
        seen["x_in"], seen["c_noise"] = x_in, c_noise
        return torch.ones_like(x_in)

    D = EDMPrecond(raw, sigma_data=0.5)
    x = torch.full((3, 2), 2.0, dtype=torch.float64)
    sigma = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64)
    out = D(x, sigma)
    c_skip, c_out, c_in, c_noise = edm_scalings(sigma, 0.5)
    torch.testing.assert_close(seen["x_in"], c_in[:, None] * x)
    torch.testing.assert_close(seen["c_noise"], c_noise)
    torch.testing.assert_close(out, c_skip[:, None] * x + c_out[:, None])


def test_vp_precond_is_eps_prediction():
    process = VPDiscrete(T=1000)
    seen = {}

    def eps_net(x_t, c_noise):
        seen["x_t"], seen["c_noise"] = x_t, c_noise
        return torch.full_like(x_t, 0.3)

    D = VPPrecond(eps_net, process)
    t = torch.tensor([1, 250, 1000])
    s = process.ve_sigma(t)
    x = torch.randn(3, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    out = D(x, s)
    torch.testing.assert_close(seen["x_t"], process.alpha(t)[:, None] * x)        # x_t = alpha_t * (x_t / alpha_t)
    torch.testing.assert_close(seen["c_noise"], t.double() / 1000)
    torch.testing.assert_close(out, x - s[:, None] * 0.3)                          # x0 = (x_t - sigma_t eps) / alpha_t
