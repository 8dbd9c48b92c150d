"""LoRA adapters on fewstep's raw networks (UNet, MLP), through peft (seed 004: LoRA, LCM-LoRA).

A LoRA adapter adds a low-rank update to a layer's weight, W' = W + Delta W with Delta W = B A (seed 004's
"Delta W = A B^T" in the other convention), scaled by alpha / rank; B starts at zero, so an adapter just
added leaves the network unchanged. LCM-LoRA trains only these matrices (its "# LoRA trainable parameters"
against "# full parameters") and treats the trained update as an "acceleration vector" tau: it combines
with a style vector as lambda_1 tau_1 + lambda_2 tau_2 (`set_adapters`, `merge`).

The machinery is peft's (LoraConfig, inject_adapter_in_model, get/set_peft_model_state_dict, and the
LoraLayer's set_adapter / set_scale / merge / unmerge); this module chooses the targets, names adapters,
writes them to files and makes the combinations. How peft lays it out:
  - a targeted layer is replaced in place by a peft layer holding the original as `base_layer`, so the
    base weights' names gain ".base_layer" (`enc.16x16_block0.conv0.base_layer.weight`);
  - adapter weights are `<layer>.lora_A.<adapter>.weight` and `<layer>.lora_B.<adapter>.weight`, so a method's
    optimizer glob (methods/base.py Group.params) is "*lora_*" for every adapter, or `adapter_glob(name)`;
  - a Linear gets A: Linear(in, r) and B: Linear(r, out); a Conv2d gets A: Conv2d(in, r) with the layer's
    kernel, stride and padding, and B: a 1x1 Conv2d(r, out), so Delta W[o, i] = sum_r B[o, r] A[r, i];
  - injecting freezes every non-LoRA parameter (requires_grad=False) and makes the new adapter the only
    active one; several adapters live side by side on one layer (one ModuleDict entry each).
peft is imported on first use (it pulls in transformers, a few seconds); without it, one FewstepError.
"""

import copy
import fnmatch
import json
import math
import os
import re
import warnings

import torch
from torch import nn

from .errors import FewstepError

FORMAT = "fewstep-lora-1"              # the safetensors metadata "format" of an adapter file
LORA_TYPES = (nn.Linear, nn.Conv2d)     # the layer types a LoRA can adapt here


def _peft():
    """peft, imported on first use; one line naming the install when it is missing."""
    try:
        import peft.functional
        import peft.tuners.lora
    except ImportError:
        raise FewstepError("LoRA needs the peft package, which is not installed; "
                           "pip install 'fewstep[lora]' (or pip install peft)") from None
    return peft


def lora_layers(net):
    """{name: peft LoraLayer} of every adapted layer of net, in module order."""
    if not hasattr(net, "peft_config"):
        return {}
    layer = _peft().tuners.lora.LoraLayer
    return {name: m for name, m in net.named_modules() if isinstance(m, layer)}


def adapters(net):
    """The names of the adapters on net, in the order they were added."""
    return list(getattr(net, "peft_config", {}))


def adapter_glob(adapter="*"):
    """The parameter glob of one adapter's weights (or every adapter's), for Group.params."""
    return f"*.lora_[AB].{adapter}.*"


def candidate_layers(net):
    """Names of every Linear and Conv2d of net (an adapted layer under its own name, not its parts)."""
    adapted = lora_layers(net)
    inside = tuple(name + "." for name in adapted)
    return [name for name, m in net.named_modules()
            if name in adapted or (isinstance(m, LORA_TYPES) and not name.startswith(inside))]


def default_targets(net):
    """The layers LoRA adapts by default: every Linear and Conv2d below the network's top level, that is
    those of the residual blocks (convs, AdaGN affine, skip), attention (qkv, proj), resampling convs and the
    embedding MLPs. The top-level layers are the network's stem and head (UNet's conv_in and out_conv, MLP's
    inp and out), which stay full-rank as LCM-LoRA's U-Net keeps conv_in and conv_out; embedding tables
    (nn.Embedding of the class labels) are never adapted."""
    return [name for name in candidate_layers(net) if "." in name]


def resolve_targets(net, targets=None):
    """Layer names from exact names or fnmatch globs (None: default_targets); one line for a target that
    names no Linear or Conv2d."""
    if targets is None:
        return default_targets(net)
    if isinstance(targets, str):
        targets = [targets]
    layers = candidate_layers(net)
    for t in targets:
        if not any(fnmatch.fnmatchcase(name, t) for name in layers):
            raise FewstepError(f"LoRA target {t!r} names no Linear or Conv2d layer of the {type(net).__name__}; "
                               f"choose names or globs from fewstep.lora.candidate_layers(net), e.g. {layers[:3]}")
    return [name for name in layers if any(fnmatch.fnmatchcase(name, t) for t in targets)]


def _check_adapter_name(net, adapter, exists):
    if not isinstance(adapter, str) or not adapter.isidentifier():
        raise FewstepError(f"adapter name {adapter!r} is not a valid name; use letters, digits and _ (e.g. 'style')")
    if exists and adapter not in adapters(net):
        raise FewstepError(f"the network has no LoRA adapter {adapter!r} (it has {adapters(net) or 'none'}); "
                           "add it with fewstep.lora.add_lora or load_adapter")
    if not exists and adapter in adapters(net):
        raise FewstepError(f"the network already has a LoRA adapter {adapter!r}; choose another name "
                           "or remove_adapter(net, name) first")


def add_lora(net, rank=4, alpha=None, adapter="default", targets=None, dropout=0.0, seed=0):
    """Inject a LoRA adapter (seed 004: W' = W + (alpha / rank) B A) into net's Linear and Conv2d layers
    (`targets`: names or globs; None = default_targets) with peft. B is zero (peft's default), so the network
    is unchanged; A is Kaiming-uniform drawn from `seed` (the global RNG is left as it was). The new adapter
    becomes the only active one (peft's rule; combine several with set_adapters), merged weights are
    unmerged first, and every non-LoRA parameter is frozen. Returns net."""
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise FewstepError(f"LoRA rank must be a positive integer, got {rank!r}")
    alpha = rank if alpha is None else alpha
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not alpha > 0:
        raise FewstepError(f"LoRA alpha must be a positive number, got {alpha!r} (None: alpha = rank, scaling 1)")
    if not 0 <= dropout < 1:
        raise FewstepError(f"LoRA dropout must be in [0, 1), got {dropout!r}")
    _check_adapter_name(net, adapter, exists=False)
    names = resolve_targets(net, targets)
    if not names:
        raise FewstepError(f"the {type(net).__name__} has no layer to adapt; pass targets= (see candidate_layers)")
    peft = _peft()
    unmerge(net)
    config = peft.LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, bias="none",
                             target_modules="^(?:" + "|".join(map(re.escape, names)) + ")$")
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        torch.manual_seed(seed)
        warnings.filterwarnings("ignore", message="Already found a `peft_config`")  # a second adapter: expected
        peft.functional.inject_adapter_in_model(config, net, adapter_name=adapter)
    return net


def remove_adapter(net, adapter):
    """Delete an adapter (peft's delete_adapter; if it was active, peft activates the first remaining one)
    and turn layers left with no adapter back into plain layers."""
    _check_adapter_name(net, adapter, exists=True)
    unmerge(net)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*was active which is now deleted")    # once per layer
        _peft().functional.delete_adapter(net, adapter, prefix="lora_")
    del net.peft_config[adapter]
    _unwrap(net, [name for name, m in lora_layers(net).items() if not m.lora_A])
    if not net.peft_config:
        del net.peft_config
    return net


def _unwrap(net, names):
    """Replace the named peft layers by their base layers (whatever is merged into them stays)."""
    layers = lora_layers(net)
    for name in names:
        net.set_submodule(name, layers[name].get_base_layer())


def lora_parameters(net, adapter=None):
    """The LoRA weights (A and B) of one adapter, or of every adapter: what an optimizer trains."""
    names = adapters(net) if adapter is None else [adapter]
    if adapter is not None:
        _check_adapter_name(net, adapter, exists=True)
    return [p for m in lora_layers(net).values() for name in names if name in m.lora_A
            for p in (*m.lora_A[name].parameters(), *m.lora_B[name].parameters())]


def count_parameters(net, adapter=None):
    """(# LoRA trainable parameters, # full parameters): LCM-LoRA's table (seed 004). Full counts the base
    network alone, every non-LoRA parameter whether frozen or not."""
    lora = {id(p) for p in lora_parameters(net)}
    trainable = sum(p.numel() for p in lora_parameters(net, adapter))
    return trainable, sum(p.numel() for p in net.parameters() if id(p) not in lora)


def adapter_config(net, adapter):
    """{"rank", "alpha", "dropout", "targets"} of an adapter, as add_lora was called."""
    _check_adapter_name(net, adapter, exists=True)
    c = net.peft_config[adapter]
    targets = [name for name, m in lora_layers(net).items() if adapter in m.lora_A]
    return {"rank": c.r, "alpha": c.lora_alpha, "dropout": c.lora_dropout, "targets": targets}


def adapter_state_dict(net, adapter="default"):
    """The adapter alone, as peft names it without the adapter name ("<layer>.lora_A.weight")."""
    _check_adapter_name(net, adapter, exists=True)
    state = _peft().functional.get_peft_model_state_dict(net, adapter_name=adapter)
    return {k: v.detach() for k, v in state.items()}


def save_adapter(path, net, adapter="default", metadata=None):
    """Write one adapter alone to a safetensors file, atomically (temporary file, then os.replace). Its
    metadata holds the format, rank, alpha, dropout and targets, plus `metadata` (e.g. {"base": the base
    network's fingerprint}), each value as a JSON string."""
    from safetensors.torch import save_file

    from .checkpoint import atomic_write
    tensors = {k: v.contiguous() for k, v in adapter_state_dict(net, adapter).items()}
    meta = {**(metadata or {}), **adapter_config(net, adapter)}
    try:
        header = {"format": FORMAT, **{k: json.dumps(v) for k, v in meta.items()}}
    except TypeError as e:
        raise FewstepError(f"adapter metadata must be JSON-able ({e}); pass strings, numbers, lists or dicts") from None
    atomic_write(os.fspath(path), lambda tmp: save_file(tensors, tmp, metadata=header))
    return path


def read_adapter(path):
    """(tensors, metadata) of an adapter file; one line for a missing, corrupt or foreign file."""
    from .checkpoint import read_safetensors
    tensors, header = read_safetensors(
        path, f"no LoRA adapter file at {path}; check the path (fewstep.lora.save_adapter writes one)",
        f"{path} is not a readable safetensors file ({{reason}}); pass an adapter written by fewstep.lora.save_adapter")
    if header.get("format") != FORMAT:
        raise FewstepError(f"{path} is not a fewstep LoRA adapter (format {header.get('format')!r}); "
                           "pass a file written by fewstep.lora.save_adapter")
    return tensors, {k: json.loads(v) for k, v in header.items() if k != "format"}


def load_adapter(net, path, adapter="default"):
    """Load an adapter file into net under the name `adapter` (injecting it first, with the file's rank,
    alpha and targets, unless net has it already) and return the file's metadata. A file that is not an
    adapter, or does not fit the network (layer names, shapes, rank), is one FewstepError and leaves net as
    it was."""
    tensors, meta = read_adapter(path)
    fresh = adapter not in adapters(net)
    if fresh:
        missing = sorted(set(meta["targets"]) - set(candidate_layers(net)))
        if missing:
            raise FewstepError(f"LoRA adapter {path} does not fit this {type(net).__name__}: it adapts layers it "
                               f"lacks ({missing[:3]}); load it into the network it was trained on")
        add_lora(net, meta["rank"], meta["alpha"], adapter, meta["targets"], meta.get("dropout", 0.0))
    own = adapter_config(net, adapter)
    problem = _mismatch(adapter_state_dict(net, adapter), tensors) or next(
        (f"{k} {own[k]} here, {meta[k]} in the file" for k in ("rank", "alpha") if own[k] != meta.get(k)), None)
    if problem:
        if fresh:
            remove_adapter(net, adapter)
        fix = "load it into the network config it was trained with" + ("" if fresh else ", or under a new name")
        raise FewstepError(f"LoRA adapter {path} does not fit the network's adapter {adapter!r} ({problem}); {fix}")
    _peft().functional.set_peft_model_state_dict(net, tensors, adapter_name=adapter)
    return meta


def _mismatch(own, state):
    """The first difference between two state dicts' names or shapes, in words; None if they fit."""
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected:
        return f"missing {missing[:2]}" if missing else f"unexpected {unexpected[:2]}"
    if wrong:
        return f"{wrong[0]} is {tuple(state[wrong[0]].shape)} in the file, {tuple(own[wrong[0]].shape)} here"
    return None


def set_adapters(net, weights):
    """Activate the named adapters, unmerged, with weights {name: lambda}: every adapted layer then computes
    base(x) + sum_i lambda_i (alpha_i / r_i) B_i A_i x, LCM-LoRA's combination lambda_1 tau_1 + lambda_2 tau_2 of
    an acceleration vector and a style vector (seed 004). Adapters not named are off; lambda = 0 adds an exact
    zero. Merged weights are unmerged first. Through peft's set_adapter (the named adapters become trainable,
    the others frozen) and LoraLayer.set_scale."""
    weights = _check_weights(net, weights)
    unmerge(net)
    _peft().functional.set_adapter(net, list(weights))
    for m in lora_layers(net).values():
        for name, lam in weights.items():
            m.set_scale(name, lam)
    return net


def _check_weights(net, weights):
    if isinstance(weights, str):
        weights = {weights: 1.0}
    if not isinstance(weights, dict) or not weights:
        raise FewstepError(f"adapter weights must be a non-empty dict name -> lambda, got {weights!r}")
    for name, lam in weights.items():
        _check_adapter_name(net, name, exists=True)
        if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not math.isfinite(lam):
            raise FewstepError(f"the weight of adapter {name!r} must be a finite number, got {lam!r}")
    return {name: float(lam) for name, lam in weights.items()}


def merge(net, weights):
    """Write W' = W + sum_i lambda_i (alpha_i / r_i) B_i A_i into every adapted layer's base weight (peft's
    LoraLayer.merge after set_adapters), so sampling costs no adapter matmuls; equal to the unmerged
    combination up to float rounding. This is the weighted sum of the adapters' updates, what LCM-LoRA's
    lambda_1 tau_1 + lambda_2 tau_2 means; it is NOT seed 004's "Merge LoRA with LoRA" product
    (alpha_1 A_1 + alpha_2 A_2)(alpha_1 B_1 + alpha_2 B_2)^T, which adds the cross terms A_1 B_2^T and A_2 B_1^T."""
    set_adapters(net, weights)
    for m in lora_layers(net).values():
        m.merge(adapter_names=[name for name in weights if name in m.lora_A])
    return net


def unmerge(net):
    """Subtract every merged update from the base weights again (peft's LoraLayer.unmerge): the base comes
    back up to float rounding, not bit for bit."""
    for m in lora_layers(net).values():
        if m.merged:
            m.unmerge()
    return net


def merged_copy(net, weights=None):
    """A plain copy of net (no LoRA layers, no peft_config) whose weights are W + sum_i lambda_i Delta W_i: for
    fast sampling or export; weights None or {} gives the base network (after unmerging, float rounding)."""
    out = copy.deepcopy(net)
    if lora_layers(out):
        if weights:
            merge(out, weights)
        else:
            unmerge(out)
        _unwrap(out, list(lora_layers(out)))
    if hasattr(out, "peft_config"):
        del out.peft_config
    return out.requires_grad_(True)


def base_fingerprint(net):
    """The fingerprint (pairs.fingerprint) of the base network alone: what save_adapter's metadata can record
    as {"base": ...} so a reader knows which weights an adapter was trained on."""
    from .pairs import fingerprint
    return fingerprint(merged_copy(net))
