"""Named conditions: class labels and real-valued scalars embedded by the networks, their null values
and dropout, classifier-free guidance over any condition with a null, and batch extras that reach the
method but never the network."""

import pytest
import torch

from fewstep.conditions import ClassLabel, Scalar
from fewstep.guidance import ClassifierFreeGuidance
from fewstep.methods.common import batch_extras, split_batch
from fewstep.nets.mlp import MLP
from fewstep.nets.unet import make_unet
from fewstep.precond import EDMPrecond


def _randomised(net):
    torch.manual_seed(0)
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.3)
    return net


@pytest.mark.parametrize("make", [lambda: MLP(dim=2, width=16, depth=1, scalars=("w",)),
                                  lambda: make_unet("cpu-tiny", img_resolution=8, channel_mult=(1, 2),
                                                    attn_resolutions=(4,), scalars=("w",))])
def test_a_scalar_condition_changes_the_output_and_must_be_given(make):
    net = _randomised(make())
    x = torch.randn(4, *((2,) if isinstance(net, MLP) else (1, 8, 8)))
    c = torch.zeros(4)
    a, b = net(x, c, w=torch.full((4,), 1.0)), net(x, c, w=torch.full((4,), 3.0))
    assert a.shape == x.shape and not torch.allclose(a, b)
    assert torch.equal(net(x, c, w=torch.full((4,), 1.0)), a)          # a function of its inputs only
    with pytest.raises(ValueError, match=r"needs the condition\(s\) \['w'\]"):
        net(x, c)
    with pytest.raises(ValueError, match=r"has no condition\(s\) \['pairs'\]"):
        net(x, c, w=torch.ones(4), pairs=torch.ones(4))


def test_networks_without_scalars_keep_their_parameters():
    # checkpoints of runs trained before scalar conditions must still load
    assert not any("scalar" in k for k in MLP(dim=2, num_classes=3).state_dict())
    assert not any("scalar" in k for k in make_unet("cpu-tiny", img_resolution=8, channel_mult=(1, 2)).state_dict())


def test_null_values_and_dropout():
    y = torch.arange(1000) % 7
    label = ClassLabel(7)
    assert torch.equal(label.null_like(y), torch.full_like(y, 7))
    dropped = label.drop(y, 0.3, torch.Generator().manual_seed(0))
    share = (dropped == 7).float().mean().item()
    assert 0.25 < share < 0.35 and torch.equal(dropped[dropped != 7], y[dropped != 7])
    assert torch.equal(label.drop(y, 0.0), y)
    w = Scalar("w", null=0.0)
    assert torch.equal(w.null_like(torch.full((3,), 5.0)), torch.zeros(3))
    with pytest.raises(ValueError, match="has no null value"):
        Scalar("s").null_like(torch.ones(2))


def test_guidance_over_a_scalar_condition_equals_its_formula():
    D = EDMPrecond(_randomised(MLP(dim=2, width=16, depth=1, scalars=("w",))))
    x, sigma, w_in = torch.randn(5, 2), torch.full((5,), 2.0), torch.full((5,), 4.0)
    guided = ClassifierFreeGuidance(D, 1.5, conditions=[Scalar("w", null=0.0)])
    expected = 2.5 * D(x, sigma, w=w_in) - 1.5 * D(x, sigma, w=torch.zeros(5))
    torch.testing.assert_close(guided(x, sigma, w=w_in), expected)
    with pytest.raises(ValueError, match="classifier-free guidance needs w"):
        guided(x, sigma)


def test_extras_reach_the_method_but_not_the_network():
    batch = {"x": torch.ones(3, 2), "class_labels": torch.zeros(3, dtype=torch.long),
             "extras": {"noise": torch.zeros(3, 2), "sample": torch.ones(3, 2)}}
    x, cond = split_batch(batch)
    assert torch.equal(x, batch["x"]) and sorted(cond) == ["class_labels"]
    assert sorted(batch_extras(batch)) == ["noise", "sample"] and batch_extras(x) == {}
    MLP(dim=2, width=8, depth=1, num_classes=1)(x, torch.zeros(3), **cond)   # the network takes what split_batch gives
