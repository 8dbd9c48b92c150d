"""generate(): the sampler and grid that fit a run's method, and its errors."""

import pytest
import torch

from fewstep.config import TrainConfig
from fewstep.errors import FewstepError
from fewstep.generate import generate, parse_steps
from fewstep.runs import build_model

NET = {"width": 16, "depth": 1}


def test_each_kind_of_run_gets_its_sampler_and_cost():
    g = torch.Generator().manual_seed(0)
    for method, steps, sampler, want in [("edm", 18, None, 35), ("edm", 4, "euler", 4), ("ddpm", 50, None, 50),
                                         ("ddpm", 20, "ddpm", 20), ("ct", 3, None, 3)]:
        cfg = TrainConfig(method=method, net_kwargs=NET)
        x, nfe = generate(build_model(cfg).eval(), cfg, 7, steps, sampler=sampler, generator=g)
        assert nfe == want and x.shape == (7, 2) and torch.isfinite(x).all(), method


def test_impossible_requests_are_fewstep_errors():
    ddpm = TrainConfig(method="ddpm", net_kwargs=NET)
    with pytest.raises(FewstepError, match="S=2000"):
        generate(build_model(ddpm).eval(), ddpm, 4, 2000)                  # more steps than T = 1000
    ct = TrainConfig(method="ct", net_kwargs=NET)
    with pytest.raises(FewstepError, match="sigma_max"):
        generate(build_model(ct).eval(), ct, 4, 1, taus=[100.0, 1.0])
    with pytest.raises(FewstepError, match="decreasing"):
        generate(build_model(ct).eval(), ct, 4, 1, taus=[80.0, 1.0, 2.0])
    for bad in ("0", "1,,2", "x", "-1"):
        with pytest.raises(FewstepError, match="--steps"):
            parse_steps(bad)
    assert parse_steps("1,2,4") == [1, 2, 4]
