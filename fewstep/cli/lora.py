"""`fewstep lora save | apply`: the LoRA adapters of LCM-LoRA and style runs (seed 004, "LCM-LoRA").

save   writes a run's adapter alone as safetensors (the "acceleration vector" tau_1 of an lcm-lora run, or the
       style vector tau_2 of a lora run), with its trainable against full parameter counts.
apply  makes a new run folder that samples with LCM's sampler: an lcm-lora run's adapter put on another base
       network of the same architecture (the teacher or a full fine-tune of it), optionally combined with a
       style run's adapter as lambda_1 tau_1 + lambda_2 tau_2, merged into the weights (fewstep.lora.merge; the
       unmerged combination, fewstep.lora.set_adapters, gives the same outputs and is the Python API's).
"""

import json
import os
import tempfile

from ..errors import FewstepError


def _adapter_run(run, methods=("lcm-lora", "lora")):
    from ..methods import METHODS
    from ..runs import load_model
    model, cfg = load_model(run)
    if cfg.method not in methods:
        raise FewstepError(f"run {run} is a {cfg.method!r} run, which has no LoRA adapter; pass a run trained with "
                           + " or ".join(f"fewstep train {m}" for m in methods))
    return model, cfg, METHODS[cfg.method].adapter


def save(run, out=None):
    """Write the EMA model's adapter of `run` alone; returns (path, trainable, full)."""
    from ..lora import count_parameters, save_adapter
    model, cfg, adapter = _adapter_run(run)
    out = out or os.path.join(run, "adapter.safetensors")
    save_adapter(out, model.net, adapter, {"run": os.path.abspath(run), "method": cfg.method,
                                           "teacher": cfg.teacher, "options": cfg.method_kwargs})
    trainable, full = count_parameters(model.net, adapter)
    return out, trainable, full


def _plain_weights(net):
    """The base network's weights under their plain names (no adapters, no .base_layer)."""
    return {k.replace(".base_layer", ""): v for k, v in net.state_dict().items() if ".lora_" not in k}


def apply(accel_run, base_run, out, style_run=None, weights=(1.0, 1.0)):
    """A run folder `out` whose model is `accel_run`'s LCM-LoRA on `base_run`'s network weights, plus
    `style_run`'s adapter, as W + lambda_1 tau_1 (+ lambda_2 tau_2) merged. Returns the recipe (dict)."""
    from ..checkpoint import flatten, save_checkpoint, write_json
    from ..lora import load_adapter, merge, merged_copy, save_adapter
    from ..runs import build_model, load_model
    from ..train import _adapted
    if os.path.exists(os.path.join(out, "checkpoint.safetensors")):
        raise FewstepError(f"{out} already holds a run; choose a new --out folder")
    model, cfg, accel = _adapter_run(accel_run, ("lcm-lora",))
    base, base_cfg = load_model(base_run)
    if base_cfg.method in ("lcm-lora", "lora"):
        raise FewstepError(f"--base {base_run} is a {base_cfg.method} run, whose adapter would be dropped; pass its "
                           "teacher as --base (and a style run as --style)")
    if getattr(base.process, "config", lambda: None)() != model.process.config():
        raise FewstepError(f"--base {base_run} samples another process ({base.process.name} "
                           f"{getattr(base.process, 'config', dict)()}) than {accel_run}'s teacher "
                           f"({model.process.config()}); apply the adapter to its teacher or a fine-tune of it")
    style = _adapter_run(style_run, ("lora",)) if style_run else None
    net = model.net
    try:
        net.load_state_dict(_adapted(net, _plain_weights(base.net)))
    except RuntimeError:
        raise FewstepError(f"the base run {base_run} has another network than {accel_run} ({base_cfg.net} "
                           f"{json.dumps(base_cfg.net_kwargs)}); apply the adapter to a fine-tune of its teacher") from None
    lambdas = {accel: float(weights[0])}
    if style:
        with tempfile.TemporaryDirectory() as tmp:
            path = save_adapter(os.path.join(tmp, "style.safetensors"), style[0].net, style[2])
            load_adapter(net, path, "style")
        lambdas["style"] = float(weights[1])
    merged = merged_copy(merge(net, lambdas), lambdas)
    fresh = build_model(cfg)                        # the lcm-lora network: adapter "lcm" with B = 0 over W'
    fresh.net.load_state_dict(_adapted(fresh.net, merged.state_dict()))
    state = {k: v.contiguous() for k, v in fresh.state_dict().items()}
    os.makedirs(out, exist_ok=True)
    write_json(os.path.join(out, "config.json"), cfg.to_dict())
    save_checkpoint(os.path.join(out, "checkpoint.safetensors"), {**flatten("net", state), **flatten("ema", state)},
                    {"k": 0, "optimizers": {}, "config": cfg.to_dict(), "world": 1})
    recipe = {"acceleration": os.path.abspath(accel_run), "base": os.path.abspath(base_run),
              "style": style_run and os.path.abspath(style_run), "weights": lambdas, "merged": True}
    write_json(os.path.join(out, "lora.json"), recipe)
    return recipe


def run_lora(args):
    if args.action == "apply" and not (args.base and args.out):
        raise FewstepError("fewstep lora apply needs --base RUN (the network the adapter goes on) and --out FOLDER")
    if args.action == "save":
        path, trainable, full = save(args.run, args.out)
        print(f"LoRA adapter of {args.run}: {trainable:,} trainable parameters, {100 * trainable / full:.1f}% of the "
              f"{full:,} of the full network -> {path}")
        return
    try:
        weights = [float(w) for w in args.weights.split(",")] if args.weights else [1.0, 1.0]
    except ValueError:
        raise FewstepError(f"--weights takes numbers lambda_1,lambda_2 (acceleration, style), got {args.weights!r}") from None
    if len(weights) != 2 and not (len(weights) == 1 and not args.style):
        raise FewstepError(f"--weights takes lambda_1,lambda_2 (acceleration, style), got {args.weights!r}")
    recipe = apply(args.run, args.base, args.out, args.style, weights + [1.0])
    print(f"{args.out}: {args.run}'s LCM-LoRA on {args.base}" + (f" with {args.style}'s style" if args.style else "")
          + f", weights {recipe['weights']}, merged; sample it with: fewstep sample {args.out} --steps 1,2,4")
