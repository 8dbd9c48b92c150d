"""Model kinds: each wraps its network, lists the samplers that fit it and its sampling grid. The
trajectory model G(x, t, s) (CTM) and the one-step generator have no method yet: their contracts here."""

import pytest
import torch

from fewstep.config import TrainConfig
from fewstep.kinds import CONSISTENCY, DENOISER, GENERATOR, TRAJECTORY
from fewstep.methods import METHODS
from fewstep.nets.mlp import MLP
from fewstep.processes import VE
from fewstep.sampling import FEW_STEP_SAMPLERS, SAMPLERS, sample_consistency, sample_heun
from fewstep.schedules import append_zero, karras_sigmas

CFG = TrainConfig()


def _net(**kw):
    torch.manual_seed(0)
    net = MLP(dim=2, width=16, depth=1, **kw)
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.3)
    return net


def test_every_method_names_a_kind_whose_samplers_exist():
    for name, method in METHODS.items():
        assert all(s in SAMPLERS or s in FEW_STEP_SAMPLERS for s in method.produces.samplers), name


def test_trajectory_model_boundaries_and_its_denoiser_view():
    G = TRAJECTORY.wrap(_net(scalars=("s",)), CFG, VE())
    x, t = torch.randn(6, 2, dtype=torch.float64), torch.full((6,), 3.0, dtype=torch.float64)
    G = G.double()
    assert torch.equal(G(x, t, s=t), x)                                  # G(x, t, t) = x by construction
    assert torch.equal(G(x, t), G.g(x, t, t))                            # without s: the denoiser g(x, t, t)
    eps = torch.full((6,), CFG.sigma_min, dtype=torch.float64)
    assert torch.equal(G.consistency(x, eps), x)                         # f(x, sigma_min) = x
    s = torch.full((6,), 1.0, dtype=torch.float64)
    torch.testing.assert_close(G(x, t, s=s), (1 / 3) * x + (2 / 3) * G.g(x, t, s))
    y = sample_heun(G, torch.randn(4, 2, dtype=torch.float64) * 80, append_zero(karras_sigmas(4)))  # like a denoiser
    assert torch.isfinite(y).all() and TRAJECTORY.teacher and "heun" in TRAJECTORY.samplers
    with pytest.raises(ValueError, match="must embed the second time s"):
        TRAJECTORY.wrap(_net(), CFG, VE())


def test_one_step_generator_is_its_denoiser_at_T():
    G = GENERATOR.wrap(_net(), CFG, VE())
    taus = GENERATOR.grid(G, CFG, 1)
    assert taus.tolist() == [CFG.sigma_max] and not GENERATOR.teacher and GENERATOR.samplers == ("consistency",)
    x_T = torch.randn(5, 2) * CFG.sigma_max
    torch.testing.assert_close(sample_consistency(G, x_T, taus), G(x_T, torch.full((5,), CFG.sigma_max)))
    assert DENOISER.teacher and not CONSISTENCY.teacher
