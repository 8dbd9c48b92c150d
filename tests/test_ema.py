import pytest
import torch

from fewstep.ema import EMA, ema_warmup


def test_ema_update_formula_and_schedule():
    net = torch.nn.Linear(3, 1)
    ema = EMA(net, rate=lambda k: 0.5 if k == 0 else 0.9)
    before = ema.module.weight.clone()
    with torch.no_grad():
        net.weight.add_(1.0)
    ema.update(net, 0)                                           # mu = 0.5
    torch.testing.assert_close(ema.module.weight, 0.5 * before + 0.5 * net.weight)
    mid = ema.module.weight.clone()
    ema.update(net, 1)                                           # mu = 0.9
    torch.testing.assert_close(ema.module.weight, 0.9 * mid + 0.1 * net.weight)
    assert not ema.module.weight.requires_grad and not ema.module.training


def test_ema_fixed_rate_and_warmup():
    assert EMA(torch.nn.Linear(1, 1), 0.95).mu(10 ** 6) == 0.95
    assert ema_warmup(0.999, 0) == pytest.approx(0.1) and ema_warmup(0.999, 10 ** 6) == 0.999


def test_ema_state_dict_round_trip():
    a, b = EMA(torch.nn.Linear(2, 2), 0.9), EMA(torch.nn.Linear(2, 2), 0.9)
    b.load_state_dict(a.state_dict())
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())
