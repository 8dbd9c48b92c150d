"""A run folder: config.json (the resolved TrainConfig), checkpoint.safetensors (the last good state)
and metrics.jsonl (one line per log interval). This module builds models from a config and loads
them back, for sampling and as teachers."""

import inspect
import json
import os

from .checkpoint import load_checkpoint, load_state, read_json, unflatten
from .config import TYPE_NAMES, TrainConfig, _is_a
from .data import DATASETS, make_dataset
from .errors import FewstepError
from .methods import METHODS
from .nets import NETS, make_net
from .nets.unet import UNET_CONFIGS, make_unet

CONFIG, CHECKPOINT, METRICS = "config.json", "checkpoint.safetensors", "metrics.jsonl"

# Fields that may change when a run is resumed; any other change would make it a different run.
RESUMABLE = {"steps", "log_every", "ckpt_every", "device", "bf16"}


def changed_fields(old, new):
    """The config fields, outside RESUMABLE, in which two resolved configs differ."""
    a, b = old.flat(), new.flat()
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k) and k not in RESUMABLE)


def check_options(factory, kwargs, what, flag):
    """Each option a known argument of factory, typed like its default: one line for a wrong name or a
    wrong type before the constructor sees it (torch's own errors for a string size are pages long)."""
    params = inspect.signature(factory).parameters
    if any(p.kind == p.VAR_KEYWORD for p in params.values()):
        return
    for name, p in params.items():
        if p.default is p.empty and p.kind == p.POSITIONAL_OR_KEYWORD and name not in kwargs:
            raise FewstepError(f"{what} needs the option {name}; pass --set {flag}.{name}=VALUE")
    for name, value in kwargs.items():
        if name not in params:
            valid = [p for p in params if p not in ("dim", "img_resolution", "in_channels", "num_classes")]
            raise FewstepError(f"{what} has no option {name!r}; its options are {valid} (--set {flag}.KEY=VALUE)")
        default = params[name].default
        kind = float if isinstance(default, float) else type(default)
        if kind in TYPE_NAMES and kind is not dict and not _is_a(value, kind):
            raise FewstepError(f"{flag}.{name} must be {TYPE_NAMES[kind]}, got {value!r}; "
                               f"e.g. --set {flag}.{name}={json.dumps(default)}")


def _first_line(e):
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]


def build_dataset(cfg):
    check_options(DATASETS[cfg.data], cfg.data_kwargs, f"dataset {cfg.data!r}", "data")
    try:
        return make_dataset(cfg.data, **cfg.data_kwargs)
    except (TypeError, ValueError, RuntimeError) as e:
        raise FewstepError(f"bad data options for dataset {cfg.data!r} ({_first_line(e)}); "
                           "fix the --set data.KEY values") from None


def net_arguments(cfg, data):
    """The raw network's constructor arguments: the data's shape and classes, then the user's net_kwargs."""
    if cfg.net in ("unet", "autoencoder", "diffusers"):
        C, H, W = data.shape
        kwargs = {"img_resolution": H, "in_channels": C}
    elif cfg.net == "classifier":
        kwargs = {"in_channels": data.shape[0], "noise_conditional": True}
    else:
        kwargs = {"dim": data.dim}
    if cfg.cond and not getattr(data, "num_classes", 0):
        raise FewstepError(f"dataset {cfg.data!r} has no class labels; drop --set cond=true")
    if cfg.cond:
        kwargs["num_classes"] = data.num_classes
    fixed = sorted((set(kwargs) | {"dim", "img_resolution", "in_channels", "num_classes"}) & set(cfg.net_kwargs))
    if fixed:
        raise FewstepError(f"net.{fixed[0]} comes from the data ({cfg.data}); remove --set net.{fixed[0]} "
                           "(class labels: --set cond=true)")
    return {**kwargs, **diffusers_timesteps(cfg), **cfg.net_kwargs}


def diffusers_timesteps(cfg):
    """A diffusers U-Net's timestep convention (fewstep.nets.diffusers): DDPM's 0-based t on a discrete VP
    process, else 1000 c_noise (consistency models'); --set net.timesteps overrides it."""
    if cfg.net != "diffusers":
        return {}
    process = METHODS[cfg.method].make_process(cfg.method_arguments())
    return {"timesteps": "vp", "T": process.T} if process.name == "vp-discrete" else {"timesteps": "cm"}


def build_model(cfg, data=None):
    """The preconditioned model of a config, freshly initialised: raw network inside the wrapper
    that the method asks for (EDM, VP or consistency). net_kwargs may name a U-Net size: config=cpu-tiny."""
    data = data or build_dataset(cfg)
    if cfg.net in ("unet", "classifier", "autoencoder", "diffusers") and len(getattr(data, "shape", ())) != 3:
        raise FewstepError(f"the {cfg.net} network needs image data; dataset {cfg.data!r} is flat: use --net mlp")
    kwargs = net_arguments(cfg, data)
    config = kwargs.pop("config", None) if cfg.net != "diffusers" else None     # diffusers: its own U-Net config
    if config is not None and (cfg.net != "unet" or config not in UNET_CONFIGS):
        raise FewstepError(f"net.config={config!r} names no network size; use it with --net unet and one of: "
                           f"{', '.join(UNET_CONFIGS)}")
    check_options(NETS[cfg.net], kwargs, f"network {cfg.net!r}", "net")
    try:
        net = make_unet(config, **kwargs) if config else make_net(cfg.net, **kwargs)
    except (RuntimeError, MemoryError) as e:
        if isinstance(e, MemoryError) or "alloc" in str(e).lower():
            raise FewstepError(f"the {cfg.net!r} network with {json.dumps(cfg.net_kwargs)} does not fit in memory; "
                               "make it smaller (net.width, net.depth or net.config)") from None
        raise FewstepError(f"bad network options for {cfg.net!r} ({_first_line(e)}); fix the --set net.KEY values") from None
    except (TypeError, ValueError, KeyError) as e:
        raise FewstepError(f"bad network options for {cfg.net!r} ({_first_line(e)}); fix the --set net.KEY values") from None
    method = METHODS[cfg.method]
    net = method.adapt_net(net, cfg.method_arguments())
    model = method.produces.wrap(net, cfg, method.make_process(cfg.method_arguments()))
    model.kind = method.produces
    return model


def load_decoder(cfg):
    """decode(x) -> images in [-1, 1] for a run trained in a latent space (its dataset's decoder; cheap, the
    latents are cached), None for a run in pixel space."""
    if not hasattr(DATASETS.get(cfg.data), "decode"):
        return None
    return build_dataset(cfg).decode


def load_config(run_dir):
    if run_dir and os.path.isfile(run_dir):
        raise FewstepError(f"{run_dir} is a file, not a run folder; pass the folder that fewstep train wrote")
    if not run_dir or not os.path.isdir(run_dir):
        raise FewstepError(f"run folder {run_dir!r} does not exist; train one first (fewstep train METHOD --out RUN)")
    if os.path.isfile(os.path.join(run_dir, "lineage.json")) and not os.path.isfile(os.path.join(run_dir, CONFIG)):
        raise FewstepError(f"{run_dir} holds the rounds of progressive distillation, one run each; pass one of them, "
                           f"e.g. {os.path.join(run_dir, 'steps-1')}")
    return TrainConfig.from_run(read_json(os.path.join(run_dir, CONFIG), "run config", kind=dict)).validate()


def check_checkpoint_config(meta, cfg, path):
    """A checkpoint must belong to the config it is loaded with (a copied-in checkpoint would otherwise
    sample a different model than config.json describes)."""
    try:
        stored = TrainConfig.from_run(meta["config"]).resolved()
    except (KeyError, TypeError, FewstepError):
        raise FewstepError(f"checkpoint {path} holds no readable config; it was not written by fewstep train") from None
    changed = changed_fields(stored, cfg.resolved())
    if changed:
        raise FewstepError(f"checkpoint {path} was trained with another config than {os.path.dirname(path) or '.'}"
                           f"/{CONFIG} ({', '.join(changed)} differ); put back the run's own config.json or checkpoint")


def read_metrics(run_dir):
    """The records of metrics.jsonl ([] when there is none); one line for a damaged file."""
    path = os.path.join(run_dir, METRICS)
    if not os.path.exists(path):
        return []
    records, i = [], 0
    if os.path.isdir(path):
        raise FewstepError(f"{path} is a folder, not the training log; delete it (fewstep writes a new log)")
    try:
        with open(path, encoding="utf-8") as f:
            for i, line in enumerate(f, 1):
                if line.strip():
                    record = json.loads(line)
                    if not isinstance(record, dict) or not isinstance(record.get("k"), int):
                        raise ValueError("not a record with a step k")
                    records.append(record)
    except UnicodeDecodeError:
        raise FewstepError(f"{path} line {i + 1} is not UTF-8 text; delete that line or the file (it is only "
                           "the training log)") from None
    except ValueError as e:
        raise FewstepError(f"{path} line {i} is not a metrics record ({_first_line(e)}); delete that line "
                           "or the file (it is only the training log)") from None
    except OSError as e:
        raise FewstepError(f"cannot read {path} ({e.strerror or e})") from None
    return records


def load_model(run_dir, which="ema"):
    """(model, cfg) of a trained run, in eval mode with gradients off. which: "ema", "net" or "target"."""
    cfg = load_config(run_dir)
    path = os.path.join(run_dir, CHECKPOINT)
    tensors, meta = load_checkpoint(path)
    check_checkpoint_config(meta, cfg, path)
    state = unflatten(which, tensors)
    if not state:
        raise FewstepError(f"checkpoint {path} has no {which!r} weights; choose one of: ema, net"
                           + (", target" if unflatten("target", tensors) else ""))
    model = build_model(cfg)
    load_state(model, state, path)
    return model.eval().requires_grad_(False), cfg


def load_teacher(run_dir):
    """The EMA denoiser D(x, sigma) of a diffusion-teacher run, for distillation."""
    if not run_dir or not os.path.isdir(run_dir):
        raise FewstepError(f"teacher run {run_dir!r} not found; train one first: fewstep train edm --out {run_dir or 'RUN'}")
    from .export import is_diffusers_folder, load_diffusers_teacher
    if is_diffusers_folder(run_dir):                    # a diffusers pipeline or U-Net folder, not a run
        return load_diffusers_teacher(run_dir)
    if not os.path.isfile(os.path.join(run_dir, CHECKPOINT)):
        raise FewstepError(f"teacher run {run_dir} has no checkpoint yet; finish training it (fewstep train edm --out {run_dir} --resume)")
    model, cfg = load_model(run_dir)
    if not model.kind.teacher:
        raise FewstepError(f"teacher run {run_dir} was trained with {cfg.method!r}, not a diffusion teacher; "
                           "pass a run whose model is a denoiser (edm, ddpm, pd, rf, reflow, ctm)")
    return model, cfg


def describe_run(run_dir):
    """`fewstep info`: what a run folder holds, as text: config, checkpoint step and size, last metrics."""
    cfg = load_config(run_dir)
    path = os.path.join(run_dir, CHECKPOINT)
    lines = [f"run        {run_dir}", f"method     {cfg.method}" + (f" (teacher {cfg.teacher})" if cfg.teacher else ""),
             f"data       {cfg.data} {json.dumps(cfg.data_kwargs)}" + (" class-conditional" if cfg.cond else ""),
             f"network    {cfg.net} {json.dumps(cfg.net_kwargs)}"]
    if os.path.isfile(path):
        tensors, meta = load_checkpoint(path)
        try:
            check_checkpoint_config(meta, cfg, path)
        except FewstepError as e:
            lines.append(f"WARNING    {e}")
        params = sum(v.numel() for k, v in tensors.items() if k.startswith("net."))
        lines.append(f"trained    {meta['k']} of {cfg.steps} steps; {params:,} network parameters; "
                     f"checkpoint {os.path.getsize(path) / 2 ** 20:.1f} MB")
    else:
        lines.append(f"trained    no checkpoint yet (start it: fewstep train {cfg.method} --out {run_dir} --resume)")
    records = read_metrics(run_dir)
    if records:
        last = records[-1]
        lines.append("last log   " + "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                               for k, v in last.items()))
    outputs = [f"{d}/{n}" for d in ("samples", "eval", "edit") if os.path.isdir(os.path.join(run_dir, d))
               for n in sorted(os.listdir(os.path.join(run_dir, d)))]
    if outputs:
        lines.append(f"outputs    {', '.join(outputs)}")
    lines.append("config     " + json.dumps(cfg.to_dict(), indent=2, sort_keys=True).replace("\n", "\n           "))
    return "\n".join(lines)
