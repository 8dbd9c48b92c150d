"""LoRA adapters (fewstep/lora.py, seed 004: LoRA, LCM-LoRA) against hand-computed B A updates."""

import copy
import fnmatch

import pytest
import torch
from torch.nn import functional as F

pytest.importorskip("peft", reason="LoRA adapters need peft (pip install 'fewstep[lora]')")

from fewstep import lora                                    # noqa: E402
from fewstep.errors import FewstepError                     # noqa: E402
from fewstep.nets.mlp import MLP                            # noqa: E402
from fewstep.nets.unet import make_unet                     # noqa: E402

LINEAR, CONV = "enc.8x8_block0.affine", "enc.8x8_block0.conv0"     # one adapted layer of each kind


def unet(**overrides):
    """cpu-tiny at 8 px, 4 channels (a latent's shape); no zero init, so every layer shapes the output."""
    torch.manual_seed(0)
    return make_unet("cpu-tiny", img_resolution=8, in_channels=4, zero_init=False, **overrides)


def inputs(n=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 4, 8, 8, generator=g), torch.randn(n, generator=g)


def randomize(net, adapter, seed, std=0.1):
    """Random A and B (B is zero after add_lora) so the adapter changes the network."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in lora.lora_parameters(net, adapter):
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return net


def delta(layer, adapter):
    """Delta W = scaling B A by hand: B (out, r) times A (r, in[, k, k]); a conv's B is 1x1."""
    A, B = layer.lora_A[adapter].weight, layer.lora_B[adapter].weight.flatten(1)
    return layer.scaling[adapter] * torch.einsum("or,r...->o...", B, A)


def apply(layer, x, W):
    """The base layer's op (its bias, stride, padding) with weight W."""
    base = layer.get_base_layer()
    if isinstance(base, torch.nn.Conv2d):
        return F.conv2d(x, W, base.bias, base.stride, base.padding)
    return F.linear(x, W, base.bias)


def layer_input(layer, seed=2):
    base = layer.get_base_layer()
    shape = (2, base.in_channels, 8, 8) if isinstance(base, torch.nn.Conv2d) else (2, base.in_features)
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def test_zero_b_leaves_unet_and_mlp_unchanged():
    net, (x, c) = unet(), inputs()
    before = net(x, c)
    lora.add_lora(net, rank=4)
    assert lora.lora_layers(net) and torch.equal(net(x, c), before)

    mlp = MLP(dim=2, width=32, depth=2)
    torch.nn.init.normal_(mlp.out.weight)           # undo the zero init of the head
    x2, c2 = torch.randn(5, 2), torch.rand(5)
    before = mlp(x2, c2)
    lora.add_lora(mlp, rank=2)
    assert torch.equal(mlp(x2, c2), before)
    assert set(lora.lora_layers(mlp)) == {"emb_mlp.0", "emb_mlp.2", "blocks.0.fc1", "blocks.0.fc2",
                                          "blocks.1.fc1", "blocks.1.fc2"}       # not the stem inp nor head out


def test_default_targets_skip_stem_head_and_embeddings():
    net = unet(num_classes=3)
    targets = lora.default_targets(net)
    assert "conv_in" not in targets and "out_conv" not in targets and "map_label" not in targets
    assert {"map_mlp.0", LINEAR, CONV, "enc.8x8_block0.attn.qkv", "mid.0.attn.proj"} <= set(targets)
    lora.add_lora(net)
    assert lora.default_targets(net) == targets     # an adapted layer still counts under its own name


@torch.no_grad()
def test_forward_is_base_plus_scaled_b_a_x():
    net = randomize(lora.add_lora(unet(), rank=4, alpha=8), "default", seed=3)
    for name in (LINEAR, CONV):
        layer = lora.lora_layers(net)[name]
        assert layer.scaling["default"] == 2.0                              # alpha / rank
        x, W = layer_input(layer), layer.get_base_layer().weight
        torch.testing.assert_close(layer(x), apply(layer, x, W + delta(layer, "default")), atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_merged_equals_unmerged_and_unmerge_restores():
    net, (x, c) = unet(), inputs()
    base = net(x, c)
    randomize(lora.add_lora(net), "default", seed=4)
    unmerged = net(x, c)
    assert not torch.allclose(unmerged, base, atol=1e-3)
    lora.merge(net, {"default": 1.0})
    assert all(m.merged for m in lora.lora_layers(net).values())
    torch.testing.assert_close(net(x, c), unmerged, atol=1e-5, rtol=1e-5)
    lora.unmerge(net)
    torch.testing.assert_close(net(x, c), unmerged, atol=1e-5, rtol=1e-5)
    lora.set_adapters(net, {"default": 0.0})
    torch.testing.assert_close(net(x, c), base, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_two_adapters_combine_as_weighted_sum_of_deltas():
    net, (x, c) = unet(), inputs()
    lora.add_lora(net, rank=4, adapter="lcm")
    lora.add_lora(net, rank=2, alpha=1, adapter="style")
    assert lora.adapters(net) == ["lcm", "style"]
    randomize(net, "lcm", seed=5), randomize(net, "style", seed=6)
    l1, l2 = 1.0, 0.7
    lora.set_adapters(net, {"lcm": l1, "style": l2})
    for name in (LINEAR, CONV):                     # W + l1 dW1 + l2 dW2 (LCM-LoRA's l1 tau1 + l2 tau2)
        layer = lora.lora_layers(net)[name]
        lora.set_adapters(net, {"lcm": 1.0, "style": 1.0})
        d1, d2 = delta(layer, "lcm"), delta(layer, "style")
        lora.set_adapters(net, {"lcm": l1, "style": l2})
        xin, W = layer_input(layer), layer.get_base_layer().weight
        torch.testing.assert_close(layer(xin), apply(layer, xin, W + l1 * d1 + l2 * d2), atol=1e-5, rtol=1e-5)
    combined = net(x, c)
    merged = lora.merged_copy(net, {"lcm": l1, "style": l2})
    torch.testing.assert_close(merged(x, c), combined, atol=1e-5, rtol=1e-5)
    lora.merge(net, {"lcm": l1, "style": l2})
    torch.testing.assert_close(net(x, c), combined, atol=1e-5, rtol=1e-5)

    lora.set_adapters(net, {"lcm": 1.0, "style": 0.0})      # lambda = 0 removes an adapter exactly
    alone = net(x, c)
    lora.set_adapters(net, {"lcm": 1.0})
    assert torch.equal(alone, net(x, c))


def test_merged_copy_is_a_plain_network():
    plain = unet()
    net = randomize(lora.add_lora(copy.deepcopy(plain)), "default", seed=7)
    out = lora.merged_copy(net, {"default": 0.5})
    assert not lora.lora_layers(out) and not hasattr(out, "peft_config")
    assert out.state_dict().keys() == plain.state_dict().keys()
    base = lora.merged_copy(net)                    # no weights: the base network again
    for k, v in plain.state_dict().items():
        torch.testing.assert_close(base.state_dict()[k], v, atol=1e-6, rtol=0)
    assert lora.lora_layers(net) and not any(m.merged for m in lora.lora_layers(net).values())


def test_save_load_round_trip_holds_only_the_adapter(tmp_path):
    from safetensors import safe_open
    plain, (x, c) = unet(), inputs()
    net = randomize(lora.add_lora(copy.deepcopy(plain), rank=4, alpha=2, adapter="lcm"), "lcm", seed=8)
    path = lora.save_adapter(tmp_path / "lcm.safetensors", net, "lcm", {"base": lora.base_fingerprint(net)})
    with safe_open(path, framework="pt") as f:
        keys = list(f.keys())
    n_layers = len(lora.default_targets(plain))
    assert len(keys) == 2 * n_layers and all(".lora_A." in k or ".lora_B." in k for k in keys)
    assert not [p for p in tmp_path.iterdir() if p.name != "lcm.safetensors"]     # no temporary file left

    other = copy.deepcopy(plain)
    meta = lora.load_adapter(other, path, adapter="accel")
    assert meta["rank"] == 4 and meta["alpha"] == 2 and meta["base"] == lora.base_fingerprint(other)
    assert meta["targets"] == lora.default_targets(plain)
    with torch.no_grad():
        assert torch.equal(other(x, c), net(x, c))
    lora.load_adapter(other, path, adapter="accel")      # an existing adapter: weights reloaded in place
    assert lora.adapters(other) == ["accel"]


def test_load_into_a_different_network_is_one_line(tmp_path):
    net = lora.add_lora(unet())
    path = lora.save_adapter(tmp_path / "a.safetensors", net, "default")
    for other in (unet(model_channels=8), MLP(dim=2, width=16)):
        before = other.state_dict()
        with pytest.raises(FewstepError) as e:
            lora.load_adapter(other, path)
        assert "\n" not in str(e.value) and "does not fit" in str(e.value)
        assert not lora.lora_layers(other) and not hasattr(other, "peft_config")   # left as it was
        assert other.state_dict().keys() == before.keys()
    bigger = lora.add_lora(unet(), rank=8)                              # the name exists with another rank
    with pytest.raises(FewstepError, match="does not fit"):
        lora.load_adapter(bigger, path)

    from safetensors.torch import save_file
    save_file({"w": torch.zeros(2)}, tmp_path / "ckpt.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    for name, match in (("ckpt", "not a fewstep LoRA adapter"), ("junk", "not a readable"), ("none", "no LoRA")):
        with pytest.raises(FewstepError, match=match) as e:
            lora.load_adapter(unet(), tmp_path / f"{name}.safetensors")
        assert "\n" not in str(e.value)


def test_bad_arguments_are_one_line():
    net = lora.add_lora(unet(), adapter="a")
    for call in (lambda: lora.add_lora(net, adapter="a"), lambda: lora.add_lora(net, rank=0, adapter="b"),
                 lambda: lora.add_lora(net, adapter="b.c"), lambda: lora.add_lora(net, adapter="b", targets="nope*"),
                 lambda: lora.set_adapters(net, {"b": 1.0}), lambda: lora.set_adapters(net, {"a": float("nan")}),
                 lambda: lora.lora_parameters(net, "b")):
        with pytest.raises(FewstepError) as e:
            call()
        assert "\n" not in str(e.value)


def test_count_parameters_cpu_tiny():
    """LCM-LoRA's table: rank r costs r (in k^2 + out) per adapted layer; at rank 4 on cpu-tiny (16-64 channels)
    that is ~15% of the network (SD-V1.5 with rank 64: 67.5M of 0.98B, 7%)."""
    net = make_unet("cpu-tiny", img_resolution=32, in_channels=4)
    full = sum(p.numel() for p in net.parameters())
    per_rank = sum(m.weight[0].numel() + m.weight.shape[0] for name, m in net.named_modules()
                   if name in lora.default_targets(net))
    lora.add_lora(net, rank=4)
    trainable, base = lora.count_parameters(net)
    assert base == full and trainable == 4 * per_rank and trainable < full / 5
    assert trainable == sum(p.numel() for p in net.parameters() if p.requires_grad)   # peft froze the base


def test_optimizer_over_lora_parameters_changes_only_lora():
    net, (x, c) = unet(), inputs()
    lora.add_lora(net, adapter="lcm")
    lora.add_lora(net, adapter="style")
    lora.set_adapters(net, {"lcm": 1.0, "style": 1.0})
    params = lora.lora_parameters(net, "lcm")
    named = dict(net.named_parameters())
    glob = {n for n in named if fnmatch.fnmatchcase(n, lora.adapter_glob("lcm"))}
    assert {id(named[n]) for n in glob} == {id(p) for p in params}             # Group.params selects the same
    assert {n for n in named if fnmatch.fnmatchcase(n, "*lora_*")} == glob | {
        n for n in named if fnmatch.fnmatchcase(n, lora.adapter_glob("style"))}
    before = {n: p.detach().clone() for n, p in named.items()}
    opt = torch.optim.Adam(params, lr=1e-2)
    net(x, c).square().mean().backward()
    opt.step()
    changed = {n for n, p in named.items() if not torch.equal(p, before[n])}
    assert changed and changed <= glob                                          # base and style bit-identical
    assert any(".lora_B." in n for n in changed)


def test_add_is_seeded_and_remove_restores_the_plain_network():
    plain = unet()
    state = torch.random.get_rng_state()
    a, b = lora.add_lora(copy.deepcopy(plain), seed=3), lora.add_lora(copy.deepcopy(plain), seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)                     # the global RNG untouched
    assert all(torch.equal(p, q) for p, q in zip(lora.lora_parameters(a), lora.lora_parameters(b)))
    lora.add_lora(a, adapter="style", targets="*attn*")
    assert len(lora.lora_parameters(a, "style")) == 2 * len([n for n in lora.default_targets(plain) if "attn" in n])
    lora.remove_adapter(a, "style")
    assert lora.adapters(a) == ["default"] and len(lora.lora_layers(a)) == len(lora.default_targets(plain))
    lora.remove_adapter(a, "default")
    assert not hasattr(a, "peft_config") and a.state_dict().keys() == plain.state_dict().keys()
