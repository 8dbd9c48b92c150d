"""The ADM U-Net (seed 002) as a raw network: shapes, F = 0 at init, conditioning, determinism, sizes,
gradients to every parameter, attention placement, memory formats and bf16 autocast."""

import pytest
import torch
from torch import nn

from fewstep.nets import NETS, make_net
from fewstep.nets.unet import UNET_CONFIGS, Attention, UNet, make_unet

TINY = dict(model_channels=16, channel_mult=(1, 2, 2), num_blocks=1, attn_resolutions=(8, 7), num_heads=2)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Small convolutions run faster on one thread than on two shared with other processes."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny(seed=0, **kwargs):
    torch.manual_seed(seed)
    return UNet(**{**TINY, **kwargs})


def perturb(net, seed=1):
    """Re-initialise the zero-initialised layers, so that every path reaches the output."""
    torch.manual_seed(seed)
    for m in net.modules():
        if isinstance(m, nn.Conv2d) and not m.weight.any():
            m.reset_parameters()
    return net


def inputs(res=32, channels=1, batch=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, channels, res, res, generator=g), torch.randn(batch, generator=g)


@pytest.mark.parametrize("res", [28, 32])
@pytest.mark.parametrize("channels", [1, 3])
def test_shape(res, channels):
    net = perturb(tiny(img_resolution=res, in_channels=channels))
    x, c = inputs(res, channels)
    assert net(x, c).shape == x.shape
    assert net(x.flatten(1), c).shape == (4, channels * res * res)            # flat input, as the MLP takes
    assert net.dim == channels * res * res and net.img_shape == (channels, res, res)
    assert tiny(img_resolution=res, in_channels=channels, out_channels=2)(x, c).shape == (4, 2, res, res)


def test_zero_at_init_then_nonzero():
    net = tiny()
    x, c = inputs()
    assert torch.equal(net(x, c), torch.zeros_like(x))
    nn.init.normal_(net.out_conv.weight, std=0.1)
    assert net(x, c).abs().min() > 0


def test_class_conditioning_and_null_label():
    net = perturb(tiny(num_classes=10)).eval()
    x, c = inputs()
    y0, y1 = net(x, c, torch.zeros(4, dtype=torch.long)), net(x, c, torch.ones(4, dtype=torch.long))
    assert (y0 - y1).abs().max() > 1e-3
    null = torch.full((4,), 10, dtype=torch.long)
    assert torch.equal(net(x, c), net(x, c, null))
    mixed = torch.tensor([0, 10, 1, 10])                                      # the null label inside a batch
    assert torch.equal(net(x, c, mixed)[1], net(x, c, null)[1])
    assert torch.equal(net(x, c, mixed)[0], y0[0])


def test_noise_level_changes_output():
    net = perturb(tiny()).eval()
    x, c = inputs()
    assert (net(x, c) - net(x, c + 0.5)).abs().max() > 1e-3
    assert torch.equal(net(x, torch.tensor(0.3)), net(x, torch.full((4,), 0.3)))   # scalar c_noise broadcasts


def test_determinism_and_dropout():
    a, b = tiny(seed=3, dropout=0.5), tiny(seed=3, dropout=0.5)
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(va, vb), k
    perturb(a), perturb(b)
    x, c = inputs()
    a.eval(), b.eval()
    assert torch.equal(a(x, c), b(x, c)) and torch.equal(a(x, c), a(x, c))
    a.train()
    assert not torch.equal(a(x, c), a(x, c))


@pytest.mark.parametrize("name, low, high", [("cpu-tiny", 0.3e6, 0.5e6), ("cpu", 1e6, 4e6), ("gpu", 20e6, 60e6)])
def test_named_config_sizes(name, low, high):
    for res in (28, 32):
        with torch.device("meta"):
            net = make_unet(name, img_resolution=res)
        assert low <= sum(p.numel() for p in net.parameters()) <= high
        assert any(isinstance(m, Attention) and m.resolution == res // 4 for m in net.enc.modules())
    assert UNET_CONFIGS["cpu-tiny"] == TINY


def test_registry():
    assert NETS["unet"] is UNet
    assert isinstance(make_net("unet", **TINY), UNet)
    with pytest.raises(ValueError, match="unknown U-Net config"):
        make_unet("huge")


@pytest.mark.parametrize("resample", ["biggan", "conv"])
def test_gradients_reach_every_parameter(resample):
    net = perturb(tiny(num_classes=3, emb="fourier", emb_scale=20.0, resample=resample, dropout=0.1))
    x, c = inputs()
    net(x, c, torch.tensor([0, 1, 2, 3])).square().mean().backward()
    unused = [k for k, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not unused


def test_attention_at_requested_resolutions():
    net = perturb(tiny(attn_resolutions=(16,)))
    seen = []
    for m in net.modules():
        if isinstance(m, Attention):
            m.register_forward_hook(lambda m, args, out: seen.append((m.resolution, args[0].shape[-1])))
    net(*inputs())
    # num_blocks=1: one encoder and two decoder blocks at 16x16, plus the middle block's at 8x8.
    assert sorted(seen) == [(8, 8), (16, 16), (16, 16), (16, 16)]
    assert sum(isinstance(m, Attention) for m in tiny(attn_resolutions=()).modules()) == 1


def test_bad_resolution_raises():
    with pytest.raises(ValueError, match=r"divisible by 2\^\(len\(channel_mult\)-1\) = 8") as e:
        UNet(img_resolution=28, channel_mult=(1, 2, 2, 2))
    assert "\n" not in str(e.value)
    UNet(img_resolution=28, channel_mult=(1, 2, 2), model_channels=8, num_heads=2)   # 28 / 4 = 7 is fine


def test_channels_last_matches_contiguous():
    net = perturb(tiny(in_channels=3)).eval()
    x, c = inputs(channels=3)
    ref = net(x, c)
    net = net.to(memory_format=torch.channels_last)
    out = net(x.contiguous(memory_format=torch.channels_last), c)
    assert ref.abs().max() > 1e-2
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_bf16_autocast_close_to_fp32():
    net = perturb(tiny(num_classes=2)).eval()
    x, c = inputs()
    ref = net(x, c)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(x, c, torch.tensor([0, 1, 2, 0]))
        out_null = net(x, c)
    assert out.dtype == torch.float32 and out.isfinite().all()
    assert ((out_null - ref).norm() / ref.norm()).item() < 0.05
